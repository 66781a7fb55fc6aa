//! `soramai backup` and `soramai restore`: the operator's snapshots, through `soramai::backup`.

use crate::{BackupAction, BackupArgs};

/// The root key from a file, or from SORAMAI_ROOT_KEY.
fn root_key(file: Option<&std::path::Path>) -> Result<soramai::LocalRootKey, Box<dyn std::error::Error>> {
    match file {
        Some(f) => Ok(soramai::LocalRootKey::from_file(f)?),
        None if std::env::var_os("SORAMAI_ROOT_KEY").is_some() => {
            Ok(soramai::LocalRootKey::from_env("SORAMAI_ROOT_KEY")?)
        }
        None => Err("the root key: --root-key-file PATH, or SORAMAI_ROOT_KEY (a backup never holds it)".into()),
    }
}

pub(crate) fn backup(a: &BackupArgs) -> Result<(), Box<dyn std::error::Error>> {
    use soramai::backup;
    match &a.action {
        Some(BackupAction::Verify { from, snapshot, root_key_file }) => {
            let root = root_key(root_key_file.as_deref())?;
            let info = backup::verify_backup(from, root, snapshot.as_deref())?;
            println!("{}", serde_json::to_string(&info)?);
        }
        Some(BackupAction::List { from, root_key_file }) => {
            let root = root_key(root_key_file.as_deref())?;
            for info in backup::list_snapshots(from, &root)? {
                println!("{}", serde_json::to_string(&info)?);
            }
        }
        None => {
            let to = a.to.as_deref().ok_or("backup --to URL (file:///path or s3://bucket)")?;
            println!("{}", serde_json::to_string(&backup::backup(&a.data_dir, to)?)?);
        }
    }
    Ok(())
}

pub(crate) fn restore(
    from: &str,
    data_dir: &std::path::Path,
    snapshot: Option<&str>,
    root_file: Option<&std::path::Path>,
) -> Result<(), Box<dyn std::error::Error>> {
    let report = soramai::backup::restore_backup(from, data_dir, snapshot, root_key(root_file)?)?;
    if let Some(file) = root_file {
        // The embedded default finds its root key in the data directory.
        let dest = data_dir.join("root.key");
        std::fs::copy(file, &dest)?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600))?;
    }
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
