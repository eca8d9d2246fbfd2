//! The enrollment signer as the collector holds it: loaded from its two files at start (a
//! problem then stops the collector), and loaded again when they change, so rotating the
//! signer is replacing the files (a Kubernetes Secret update, an Ansible run).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use portolan_tls::enroll::{EnrollError, Signer};
use tracing::{info, warn};

type Stamp = Option<(u64, u64, i64, i64)>;

fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.ino(), m.len(), m.mtime(), m.mtime_nsec()))
}

/// The signer's certificate and key files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignerFiles {
    /// The signer's certificate, PEM.
    pub cert: PathBuf,
    /// Its private key, PEM.
    pub key: PathBuf,
}

impl SignerFiles {
    fn load(&self) -> Result<Signer, EnrollError> {
        let read = |what: &'static str, path: &Path| {
            std::fs::read_to_string(path).map_err(|e| EnrollError::LoadSigner {
                what,
                reason: format!("{}: {e}", path.display()),
            })
        };
        Signer::from_pem(
            &read("its certificate", &self.cert)?,
            &read("its key", &self.key)?,
        )
    }

    fn stamps(&self) -> [Stamp; 2] {
        [stamp(&self.cert), stamp(&self.key)]
    }
}

/// The signer in force, reloaded when its files change.
#[derive(Debug, Clone)]
pub struct SignerHandle {
    files: SignerFiles,
    state: Arc<Mutex<(Arc<Signer>, [Stamp; 2])>>,
}

impl SignerHandle {
    /// Loads the signer.
    pub fn load(files: SignerFiles) -> Result<SignerHandle, EnrollError> {
        let stamps = files.stamps();
        let signer = files.load()?;
        Ok(SignerHandle {
            files,
            state: Arc::new(Mutex::new((Arc::new(signer), stamps))),
        })
    }

    /// The signer in force, after loading it again if its files changed (a file that does
    /// not load is logged, and the previous signer stays in force).
    pub fn current(&self) -> Option<Arc<Signer>> {
        let mut state = self.state.lock().ok()?;
        let now = self.files.stamps();
        if now != state.1 {
            state.1 = now;
            match self.files.load() {
                Ok(signer) => {
                    info!(cert = %self.files.cert.display(), not_after = signer.not_after(), "reloaded the enrollment signer: new certificates are signed with it");
                    state.0 = Arc::new(signer);
                }
                Err(e) => {
                    warn!(error = %e, "the enrollment signer's files changed but do not load; the previous signer stays in force")
                }
            }
        }
        Some(state.0.clone())
    }
}
