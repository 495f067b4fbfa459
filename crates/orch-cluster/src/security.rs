//! How an instance proves itself to NATS and protects the connection: credentials
//! (user and password, a token, an nkey seed, or a `.creds` file) and TLS (the CA that
//! signed the servers' certificates, and this instance's client certificate when the
//! servers verify clients). Secrets are never printed (`Debug` names the method only).

use std::path::PathBuf;

/// The credentials an instance presents.
#[derive(Clone, Default)]
pub enum Auth {
    /// No credentials (a cluster on a private loopback or a test).
    #[default]
    None,
    UserPassword {
        user: String,
        password: String,
    },
    Token(String),
    /// An nkey seed (`SU…`): the server checks a signature, the seed never travels.
    NkeySeed(String),
    /// A `.creds` file (a user JWT and its nkey seed).
    CredentialsFile(PathBuf),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::None => "None",
            Auth::UserPassword { .. } => "UserPassword(..)",
            Auth::Token(_) => "Token(..)",
            Auth::NkeySeed(_) => "NkeySeed(..)",
            Auth::CredentialsFile(_) => "CredentialsFile(..)",
        })
    }
}

/// TLS to the servers: required whenever set.
#[derive(Debug, Clone)]
pub struct Tls {
    /// PEM CA bundle the servers' certificates must chain to.
    pub ca_file: PathBuf,
    /// This instance's certificate and key (PEM), for servers that verify clients.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// Credentials and TLS together.
#[derive(Debug, Clone, Default)]
pub struct Security {
    pub auth: Auth,
    pub tls: Option<Tls>,
}

impl Security {
    /// Apply to connection options.
    pub(crate) async fn apply(
        &self,
        mut o: async_nats::ConnectOptions,
    ) -> std::io::Result<async_nats::ConnectOptions> {
        o = match &self.auth {
            Auth::None => o,
            Auth::UserPassword { user, password } => {
                o.user_and_password(user.clone(), password.clone())
            }
            Auth::Token(t) => o.token(t.clone()),
            Auth::NkeySeed(s) => o.nkey(s.clone()),
            Auth::CredentialsFile(p) => o.credentials_file(p).await?,
        };
        if let Some(t) = &self.tls {
            o = o.require_tls(true).add_root_certificates(t.ca_file.clone());
            if let Some((cert, key)) = &t.client_cert {
                o = o.add_client_certificate(cert.clone(), key.clone());
            }
        }
        Ok(o)
    }

    /// Whether both credentials and TLS are set (what a non-loopback cluster needs).
    pub fn is_complete(&self) -> bool {
        !matches!(self.auth, Auth::None) && self.tls.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_reach_debug_output() {
        let s = Security {
            auth: Auth::UserPassword {
                user: "orch".into(),
                password: "hunter2-secret".into(),
            },
            tls: None,
        };
        let d = format!("{s:?}");
        assert!(!d.contains("hunter2") && !d.contains("orch"), "{d}");
        assert!(!s.is_complete());
        for a in [
            Auth::Token("tok-secret".into()),
            Auth::NkeySeed("SUSEED-secret".into()),
        ] {
            assert!(!format!("{a:?}").contains("secret"));
        }
    }
}
