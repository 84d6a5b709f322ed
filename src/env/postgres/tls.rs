//! TLS to Postgres, with rustls (the `ring` provider).
//!
//! The connection string's `sslmode` says how far a connection trusts the
//! server, as in libpq (`prefer` when the string names none):
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | not asked for |
//! | `prefer` (default) | if the server offers it, else in the clear | not checked: protects from eavesdropping, not from impersonation |
//! | `require` | always; refused if the server does not offer it | not checked, unless `sslrootcert` is given: then as `verify-ca` (as libpq does) |
//! | `verify-ca` | always | signed by a trusted root; any host name |
//! | `verify-full` | always | signed by a trusted root, and names the host (or IP address) the URL connects to |
//!
//! The trusted roots are the PEM certificates in the file `sslrootcert=path`
//! names, or the system's (`sslrootcert=system`, or no `sslrootcert`).
//! tokio-postgres knows neither `verify-ca`, `verify-full` nor `sslrootcert`,
//! so [`TlsSettings::split`] takes both keys out of the connection string
//! before the driver parses the rest.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode as DriverSslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The connection string's `sslmode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, String> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other:?} is not one of disable, prefer, require, verify-ca, \
                     verify-full"
                ));
            }
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where the trusted roots come from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Roots {
    /// The system's root certificates.
    System,
    /// The PEM file `sslrootcert` names.
    File(PathBuf),
}

impl fmt::Display for Roots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Roots::System => f.write_str("the system's root certificates"),
            Roots::File(path) => write!(f, "sslrootcert {}", path.display()),
        }
    }
}

/// How connections use TLS: `sslmode` and `sslrootcert`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TlsSettings {
    mode: SslMode,
    /// `None`: no `sslrootcert` given (the system's roots, where used).
    root_cert: Option<Roots>,
}

/// What a connection checks of the server's certificate.
enum Verification {
    /// Nothing (`prefer`, `require` without `sslrootcert`).
    None,
    /// The chain up to a trusted root; the host name too if `name`.
    Chain { roots: Roots, name: bool },
}

impl TlsSettings {
    /// Takes `sslmode` and `sslrootcert` out of `connection` (a URL or
    /// libpq's `key=value` form); returns what is left, for the driver.
    pub(crate) fn split(connection: &str) -> Result<(String, TlsSettings), String> {
        let mut mode = None;
        let mut root_cert = None;
        let mut take = |key: &str, value: &str| -> Result<bool, String> {
            match key {
                "sslmode" => mode = Some(SslMode::parse(value)?),
                "sslrootcert" if value.is_empty() => return Err("sslrootcert is empty".into()),
                "sslrootcert" if value == "system" => root_cert = Some(Roots::System),
                "sslrootcert" => root_cert = Some(Roots::File(PathBuf::from(value))),
                _ => return Ok(false),
            }
            Ok(true)
        };
        let rest =
            if connection.starts_with("postgres://") || connection.starts_with("postgresql://") {
                split_url(connection, &mut take)?
            } else {
                split_keywords(connection, &mut take)?
            };
        let mode = mode.unwrap_or_default();
        Ok((rest, TlsSettings { mode, root_cert }))
    }

    /// The driver's mode: whether it asks for TLS, and whether it must get it.
    pub(crate) fn driver_mode(&self) -> DriverSslMode {
        match self.mode {
            SslMode::Disable => DriverSslMode::Disable,
            SslMode::Prefer => DriverSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => DriverSslMode::Require,
        }
    }

    fn verification(&self) -> Verification {
        let roots = || self.root_cert.clone().unwrap_or(Roots::System);
        match (self.mode, &self.root_cert) {
            (SslMode::Disable | SslMode::Prefer, _) | (SslMode::Require, None) => {
                Verification::None
            }
            (SslMode::Require, Some(_)) | (SslMode::VerifyCa, _) => Verification::Chain {
                roots: roots(),
                name: false,
            },
            (SslMode::VerifyFull, _) => Verification::Chain {
                roots: roots(),
                name: true,
            },
        }
    }

    /// The TLS connector every connection uses (in `disable`, never called
    /// on). Reads the roots once, here.
    pub(crate) fn connector(&self) -> Result<MakeRustlsConnect, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match self.verification() {
            Verification::None => Arc::new(AnyCertificate(provider.clone())),
            Verification::Chain { roots, name } => {
                let store = Arc::new(root_store(&roots)?);
                let webpki = WebPkiServerVerifier::builder_with_provider(store, provider.clone())
                    .build()
                    .map_err(|error| format!("cannot use {roots}: {error}"))?;
                match name {
                    true => webpki,
                    false => Arc::new(AnyName(webpki)),
                }
            }
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| format!("cannot set up TLS: {error}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(MakeRustlsConnect::new(config))
    }

    /// A clear account of a connection's TLS failure, or `None` if `error`
    /// is not about TLS.
    pub(crate) fn explain(&self, error: &tokio_postgres::Error) -> Option<String> {
        let mode = self.mode.as_str();
        let mut causes =
            std::iter::successors(Some(error as &(dyn std::error::Error + 'static)), |error| {
                error.source()
            });
        if causes.any(|cause| cause.to_string().contains("server does not support TLS")) {
            return Some(format!(
                "the server does not offer TLS, and sslmode={mode} requires it (turn ssl on in \
                 the server, or use sslmode=prefer or sslmode=disable)"
            ));
        }
        let tls = rustls_error(error)?;
        let roots = match self.verification() {
            Verification::Chain { roots, .. } => roots,
            Verification::None => Roots::System,
        };
        Some(match tls {
            // A CA of the same name that did not sign it: BadSignature.
            rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::BadSignature,
            ) => format!(
                "the server's certificate is not trusted (sslmode={mode}): no certificate in \
                 {roots} signed it"
            ),
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => format!(
                "the server's certificate does not name the host the URL connects to \
                 (sslmode={mode} checks the name; verify-ca does not): {tls}"
            ),
            rustls::Error::InvalidCertificate(_) => {
                format!("the server's certificate is refused (sslmode={mode}): {tls}")
            }
            _ => format!("the TLS handshake failed (sslmode={mode}): {tls}"),
        })
    }
}

/// Splits a URL's query: `take` keeps the keys it knows (true).
fn split_url(
    url: &str,
    take: &mut impl FnMut(&str, &str) -> Result<bool, String>,
) -> Result<String, String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok(url.to_string());
    };
    let mut kept: Vec<&str> = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_encoding::percent_decode_str(value)
            .decode_utf8()
            .map_err(|_| format!("the value of {key} is not UTF-8"))?;
        if !take(key, &value)? {
            kept.push(pair);
        }
    }
    Ok(match kept.is_empty() {
        true => base.to_string(),
        false => format!("{base}?{}", kept.join("&")),
    })
}

/// Splits libpq's `key=value key='quoted value'` form: `take` keeps the
/// keys it knows (true); the others are passed on as written.
fn split_keywords(
    text: &str,
    take: &mut impl FnMut(&str, &str) -> Result<bool, String>,
) -> Result<String, String> {
    let mut kept: Vec<&str> = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let equals = rest
            .find('=')
            .ok_or_else(|| format!("{rest:?} has no '='"))?;
        let key = rest[..equals].trim();
        let after = rest[equals + 1..].trim_start();
        let (value, length) = keyword_value(after)?;
        let end = rest.len() - after.len() + length;
        if !take(key, &value)? {
            kept.push(&rest[..end]);
        }
        rest = rest[end..].trim_start();
    }
    Ok(kept.join(" "))
}

/// The value at the start of `text` (quoted or not, escapes undone) and the
/// bytes it takes.
fn keyword_value(text: &str) -> Result<(String, usize), String> {
    let mut value = String::new();
    let quoted = text.starts_with('\'');
    let mut chars = text.char_indices().skip(usize::from(quoted));
    while let Some((index, c)) = chars.next() {
        match c {
            '\'' if quoted => return Ok((value, index + 1)),
            c if c.is_whitespace() && !quoted => return Ok((value, index)),
            '\\' => match chars.next() {
                Some((_, escaped)) => value.push(escaped),
                None => return Err("a connection string ends in '\\'".to_string()),
            },
            c => value.push(c),
        }
    }
    match quoted {
        true => Err("a quoted value in the connection string is not closed".to_string()),
        false => Ok((value, text.len())),
    }
}

/// The trusted roots: the PEM file's certificates, or the system's.
fn root_store(roots: &Roots) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::File(path) => {
            let certificates = CertificateDer::pem_file_iter(path)
                .map_err(|error| format!("cannot read {roots}: {error}"))?;
            for certificate in certificates {
                let certificate =
                    certificate.map_err(|error| format!("cannot read {roots}: {error}"))?;
                store
                    .add(certificate)
                    .map_err(|error| format!("{roots} holds a bad certificate: {error}"))?;
            }
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::warn!(%error, "postgres storage: a system root certificate cannot be read");
            }
            store.add_parsable_certificates(found.certs);
        }
    }
    if store.is_empty() {
        return Err(format!("{roots} holds no certificate"));
    }
    Ok(store)
}

/// The rustls error inside a driver error, if any (through `io::Error`s).
fn rustls_error(error: &tokio_postgres::Error) -> Option<&rustls::Error> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(current) = cause {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(tls) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(tls);
        }
        cause = current.source();
    }
    None
}

/// `prefer` and `require`: any certificate (the handshake's signatures are
/// still checked, so the session is with the holder of the certificate's key).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain is checked, the host name is not.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified =
            self.0
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        match verified {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(connection: &str) -> (String, TlsSettings) {
        TlsSettings::split(connection).expect("it parses")
    }

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_of_a_url_and_the_rest_is_kept() {
        let (rest, settings) = split(
            "postgres://u@h:5/db?options=-csearch_path%3Ds&sslmode=verify-full&sslrootcert=%2Fca%20dir%2Fca.pem",
        );
        assert_eq!(rest, "postgres://u@h:5/db?options=-csearch_path%3Ds");
        assert_eq!(settings.mode, SslMode::VerifyFull);
        assert_eq!(
            settings.root_cert,
            Some(Roots::File(PathBuf::from("/ca dir/ca.pem")))
        );
        let (rest, settings) = split("postgresql://u@h/db?sslmode=disable");
        assert_eq!(
            (rest.as_str(), settings.mode),
            ("postgresql://u@h/db", SslMode::Disable)
        );
    }

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_of_the_keyword_form() {
        let (rest, settings) =
            split("host=h user=u sslmode = verify-ca sslrootcert='/a b/c\\'s.pem' dbname=d");
        assert_eq!(rest, "host=h user=u dbname=d");
        assert_eq!(settings.mode, SslMode::VerifyCa);
        assert_eq!(
            settings.root_cert,
            Some(Roots::File(PathBuf::from("/a b/c's.pem")))
        );
    }

    #[test]
    fn the_default_is_prefer_and_an_unknown_sslmode_is_refused_naming_the_choices() {
        assert_eq!(split("postgres://u@h/db").1.mode, SslMode::Prefer);
        let error = TlsSettings::split("postgres://u@h/db?sslmode=allow").unwrap_err();
        assert!(error.contains("sslmode=\"allow\" is not one of"), "{error}");
        assert!(error.contains("verify-full"), "{error}");
    }

    #[test]
    fn require_checks_the_chain_only_with_a_root_certificate_as_libpq_does() {
        let settings = split("postgres://u@h/db?sslmode=require").1;
        assert!(matches!(settings.verification(), Verification::None));
        let settings = split("postgres://u@h/db?sslmode=require&sslrootcert=/ca.pem").1;
        assert!(matches!(
            settings.verification(),
            Verification::Chain { name: false, .. }
        ));
        let settings = split("postgres://u@h/db?sslmode=verify-full").1;
        assert!(matches!(
            settings.verification(),
            Verification::Chain {
                roots: Roots::System,
                name: true
            }
        ));
    }

    #[test]
    fn a_root_certificate_file_that_is_missing_or_holds_no_certificate_is_refused() {
        let settings =
            split("postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem").1;
        let error = settings.connector().err().expect("refused");
        assert!(
            error.contains("cannot read sslrootcert /nonexistent/ca.pem"),
            "{error}"
        );
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let url = format!(
            "postgres://u@h/db?sslmode=verify-ca&sslrootcert={}",
            empty.display()
        );
        let error = split(&url).1.connector().err().expect("refused");
        assert!(error.contains("holds no certificate"), "{error}");
    }
}
