//! TLS for the API listener (security.md §6): TLS 1.2 minimum, HTTP/1.1 via ALPN.

use openssl::ssl::{SslAcceptor, SslAcceptorBuilder, SslFiletype, SslMethod, SslVersion};

pub fn acceptor(cert_file: &str, key_file: &str) -> Result<SslAcceptorBuilder, String> {
    let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).map_err(|e| format!("TLS setup: {e}"))?;
    builder.set_min_proto_version(Some(SslVersion::TLS1_2)).map_err(|e| format!("TLS setup: {e}"))?;
    builder.set_certificate_chain_file(cert_file).map_err(|e| format!("server.cert_file {cert_file}: {e}"))?;
    builder.set_private_key_file(key_file, SslFiletype::PEM).map_err(|e| format!("server.key_file {key_file}: {e}"))?;
    builder.check_private_key().map_err(|e| format!("server.key_file does not match the certificate: {e}"))?;
    Ok(builder)
}
