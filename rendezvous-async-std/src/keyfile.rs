//! A stable identity: the keypair kept in a file.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use libp2p_identity::Keypair;

/// Loads the keypair in `path` (libp2p's protobuf encoding), or creates an
/// ed25519 one there, readable by the owner only.
pub fn load_or_create(path: &Path) -> io::Result<Keypair> {
    match fs::read(path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a libp2p key: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let keypair = Keypair::generate_ed25519();
            let bytes = keypair.to_protobuf_encoding().map_err(io::Error::other)?;
            let mut options = fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(path)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            Ok(keypair)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_key_is_private_and_loads_back_as_the_same_identity() {
        let dir = std::env::temp_dir().join(format!("rendezvous-key-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        let _ = fs::remove_file(&path);
        let created = load_or_create(&path).unwrap();
        let loaded = load_or_create(&path).unwrap();
        assert_eq!(created.public(), loaded.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        fs::write(&path, b"not a key").unwrap();
        assert!(load_or_create(&path).unwrap_err().to_string().contains("is not a libp2p key"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
