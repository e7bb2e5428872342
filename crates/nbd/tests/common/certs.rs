//! Test x509 credentials made with the `openssl` CLI: a CA, a server certificate for
//! 127.0.0.1/localhost and a client certificate, laid out as qemu's `tls-creds-x509` wants them.
//! (The end-to-end tests of `crates/cli` include this file too.)

use std::path::{Path, PathBuf};
use std::process::Command;

type Result<T = ()> = anyhow::Result<T>;

/// A CA and the certificates it signed, in `dir`.
pub struct Certs {
    pub dir: PathBuf,
}

impl Certs {
    /// Makes a CA, a server certificate and a client certificate under `dir`.
    pub fn make(dir: &Path) -> Result<Certs> {
        std::fs::create_dir_all(dir)?;
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca-key.pem",
                "-out",
                "ca-cert.pem",
                "-days",
                "2",
                "-subj",
                "/CN=ferry test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        )?;
        sign(
            dir,
            "server",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )?;
        sign(
            dir,
            "client",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=clientAuth\n",
        )?;
        Ok(Certs {
            dir: dir.to_path_buf(),
        })
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca-cert.pem")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server-cert.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server-key.pem")
    }

    /// A directory for qemu's `tls-creds-x509,endpoint=client`: the CA, and the client's
    /// certificate and key when `with_client_cert`.
    pub fn qemu_client_dir(&self, with_client_cert: bool) -> Result<PathBuf> {
        let name = if with_client_cert {
            "qemu-client"
        } else {
            "qemu-anon"
        };
        let d = self.dir.join(name);
        std::fs::create_dir_all(&d)?;
        std::fs::copy(self.ca(), d.join("ca-cert.pem"))?;
        if with_client_cert {
            std::fs::copy(self.dir.join("client-cert.pem"), d.join("client-cert.pem"))?;
            std::fs::copy(self.dir.join("client-key.pem"), d.join("client-key.pem"))?;
        }
        Ok(d)
    }
}

/// `NAME-key.pem` and `NAME-cert.pem` signed by the CA, with the extensions `ext`.
fn sign(dir: &Path, name: &str, ext: &str) -> Result {
    let (key, csr, cert, ext_file) = (
        format!("{name}-key.pem"),
        format!("{name}.csr"),
        format!("{name}-cert.pem"),
        format!("{name}.ext"),
    );
    std::fs::write(dir.join(&ext_file), ext)?;
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ],
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca-cert.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "2",
            "-extfile",
            &ext_file,
        ],
    )
}

fn openssl(dir: &Path, args: &[&str]) -> Result {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| {
            anyhow::anyhow!("run openssl (scripts/install-test-tools installs it): {e}")
        })?;
    anyhow::ensure!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
