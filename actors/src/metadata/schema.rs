// Written by hand to match migrations/{sqlite,postgres}: timestamps are declared `Timestamp` for both
// dialects; PostgreSQL stores them as TIMESTAMPTZ and every connection runs in UTC.

diesel::table! {
    inodes (id) {
        id -> BigInt,
        parent_id -> Nullable<BigInt>,
        name -> Text,
        path -> Text,
        #[sql_name = "type"]
        kind -> Text,
        size -> BigInt,
        mode -> Text,
        owner -> Text,
        atime -> Timestamp,
        mtime -> Timestamp,
        ctime -> Timestamp,
        backend_type -> Text,
        callfs_instance_id -> Nullable<Text>,
        content_version -> BigInt,
        erasure_coded -> Bool,
        symlink_target -> Nullable<Text>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        blob -> Nullable<Text>,
    }
}

diesel::table! {
    blob_intents (blob) {
        blob -> Text,
        backend_type -> Text,
        instance_id -> Nullable<Text>,
        created_at -> Timestamp,
        touched_at -> Timestamp,
    }
}

diesel::table! {
    blob_garbage (blob) {
        blob -> Text,
        backend_type -> Text,
        instance_id -> Nullable<Text>,
        delete_after -> Timestamp,
    }
}

diesel::table! {
    single_use_links (id) {
        id -> BigInt,
        token -> Text,
        file_path -> Text,
        status -> Text,
        expires_at -> Timestamp,
        used_at -> Nullable<Timestamp>,
        hmac_signature -> Text,
        created_by -> Text,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}
