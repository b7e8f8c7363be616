//! The small JSON files a running host keeps in its state directory for `iniesta plugins`
//! (its plugins, its isolated workers, its open circuits): written whole — a temporary file,
//! then a rename — so a reader never sees half of one, and read leniently (a missing or
//! unreadable file reads as the default).

use std::path::Path;

/// Write `value` as pretty JSON to `path`, creating its directory.
pub fn write<T: serde::Serialize + ?Sized>(path: &Path, value: &T) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::create_dir_all(dir)?;
    std::fs::write(&tmp, serde_json::to_vec_pretty(value).unwrap_or_default())?;
    std::fs::rename(&tmp, path)
}

/// What `path` holds, or the default when it is missing or not that JSON.
pub fn read<T: serde::de::DeserializeOwned + Default>(path: &Path) -> T {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_whole_and_read_back_or_defaulted() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("deeper/state-1.json");
        write(&path, &vec![1, 2, 3]).expect("written");
        assert_eq!(read::<Vec<u32>>(&path), [1, 2, 3]);
        assert!(!dir.path().join("deeper/.state-1.json.tmp").exists());
        assert!(read::<Vec<u32>>(&dir.path().join("missing.json")).is_empty());
    }
}
