//! Throwaway certificates (openssl CLI).

use super::*;

/// A test CA, a server certificate it signed (SAN DNS:localhost and IP:127.0.0.1), a server
/// certificate valid only for DNS:localhost, a client certificate, and an unrelated CA: PEM
/// files in a temporary directory, made with the `openssl` command (EC P-256 keys, 2 days).
pub struct TestCerts {
    dir: TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// Valid for DNS:localhost only (not for 127.0.0.1).
    pub dns_only_cert: PathBuf,
    pub dns_only_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that signed none of the above.
    pub other_ca: PathBuf,
}

impl TestCerts {
    pub fn generate() -> TestCerts {
        let dir = temp_dir("ad-certs-");
        // Readable by the postgres account too (it reads its copies, but keep it simple).
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let d = dir.path();
        let ossl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| {
                    panic!("run openssl (install it: apt-get install openssl): {e}")
                });
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for (name, cn) in [
            ("ca", "analytics-demo test CA"),
            ("other-ca", "some other CA"),
        ] {
            let (key, crt, subj) = (
                format!("{name}.key"),
                format!("{name}.crt"),
                format!("/CN={cn}"),
            );
            let mut args = vec![
                "req", "-x509", "-days", "2", "-subj", &subj, "-keyout", &key, "-out", &crt,
            ];
            args.extend(ec);
            args.extend([
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
            ossl(&args);
        }
        let leaf = |name: &str, cn: &str, ext: &str| {
            let ext_file = format!("{name}.ext");
            fs::write(d.join(&ext_file), ext).expect("write ext file");
            let (key, csr, crt) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
            );
            let subj = format!("/CN={cn}");
            let mut args = vec!["req", "-new", "-subj", &subj, "-keyout", &key, "-out", &csr];
            args.extend(ec);
            ossl(&args);
            ossl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &crt,
                "-extfile",
                &ext_file,
            ]);
            fs::set_permissions(d.join(&key), fs::Permissions::from_mode(0o644)).expect("chmod");
        };
        let server_ext = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                          extendedKeyUsage=serverAuth\n";
        leaf(
            "server",
            "localhost",
            &format!("{server_ext}subjectAltName=DNS:localhost,IP:127.0.0.1\n"),
        );
        leaf(
            "dns-only",
            "localhost",
            &format!("{server_ext}subjectAltName=DNS:localhost\n"),
        );
        leaf(
            "client",
            "app",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=clientAuth\n",
        );
        TestCerts {
            ca: d.join("ca.crt"),
            server_cert: d.join("server.crt"),
            server_key: d.join("server.key"),
            dns_only_cert: d.join("dns-only.crt"),
            dns_only_key: d.join("dns-only.key"),
            client_cert: d.join("client.crt"),
            client_key: d.join("client.key"),
            other_ca: d.join("other-ca.crt"),
            dir,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
