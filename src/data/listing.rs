//! Finding the image files of a folder (sorted, with size and time for the cache's
//! fingerprint) and reading their labels from the folder names or a CSV column.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::DataError;
use super::folder_config::LabelSource;

/// One image file of the listing.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Listed {
    /// Relative to the root, `/`-separated.
    pub rel: String,
    pub len: u64,
    pub modified_ns: u128,
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        .unwrap_or(false)
}

pub(crate) fn io_err(path: &Path) -> impl Fn(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Every image file under `root`, sorted by relative path, and the number of other files.
pub(crate) fn list(root: &Path) -> Result<(Vec<Listed>, usize), DataError> {
    let meta = std::fs::metadata(root).map_err(io_err(root))?;
    if !meta.is_dir() {
        return Err(DataError::Invalid(format!(
            "{} is not a folder: ImageFolderConfig::root names a folder of images",
            root.display()
        )));
    }
    let mut out = Vec::new();
    let mut ignored = 0;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel_dir) = stack.pop() {
        let dir = root.join(&rel_dir);
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let rel = rel_dir.join(entry.file_name());
            let kind = entry.file_type().map_err(io_err(&entry.path()))?;
            if kind.is_dir() {
                stack.push(rel);
            } else if is_image(&rel) {
                // A link to a file is followed for its size and time (links to folders are not).
                let Ok(m) = std::fs::metadata(entry.path()) else {
                    ignored += 1;
                    continue;
                };
                if !m.is_file() {
                    ignored += 1;
                    continue;
                }
                let modified_ns = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                let rel = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push(Listed {
                    rel,
                    len: m.len(),
                    modified_ns,
                });
            } else if !kind.is_dir() {
                ignored += 1;
            }
        }
    }
    out.sort();
    Ok((out, ignored))
}

/// The fields of one CSV line (RFC 4180: quoted fields, doubled quotes inside).
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(ch) = chars.next() {
        match (ch, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', true) => quoted = false,
            ('"', false) if cur.is_empty() => quoted = true,
            (',', false) => fields.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    fields.push(cur);
    fields
}

/// The labels of a CSV: relative path or file name -> class name.
fn read_csv(path: &Path, column: &str) -> Result<BTreeMap<String, String>, DataError> {
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    if meta.len() > 256 << 20 {
        return Err(DataError::Invalid(format!(
            "{} is {} bytes: a label CSV of more than 256 MiB is not one",
            path.display(),
            meta.len()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = csv_fields(lines.next().ok_or_else(|| {
        DataError::Invalid(format!(
            "{} is empty: it needs a header row",
            path.display()
        ))
    })?);
    let header: Vec<String> = header.iter().map(|h| h.trim().to_string()).collect();
    let file_col = header.iter().position(|h| h == "file").unwrap_or(0);
    let label_col = header.iter().position(|h| h == column).ok_or_else(|| {
        DataError::Invalid(format!(
            "{} has no column '{column}'; its columns are: {}",
            path.display(),
            header.join(", ")
        ))
    })?;
    let mut out = BTreeMap::new();
    for (n, line) in lines.enumerate() {
        let fields = csv_fields(line);
        let (Some(file), Some(label)) = (fields.get(file_col), fields.get(label_col)) else {
            return Err(DataError::Invalid(format!(
                "{} line {}: {} fields, the header has {}",
                path.display(),
                n + 2,
                fields.len(),
                header.len()
            )));
        };
        let label = label.trim();
        if label.is_empty() {
            continue;
        }
        out.insert(file.trim().replace('\\', "/"), label.to_string());
    }
    Ok(out)
}

/// The label (class name) of every listed file that has one, and the rows of a CSV that name
/// no listed file.
pub(crate) fn class_names_of(
    files: &[Listed],
    labels: &LabelSource,
) -> Result<(Vec<Option<String>>, Vec<String>), DataError> {
    match labels {
        LabelSource::None => Ok((vec![None; files.len()], Vec::new())),
        LabelSource::Folders => Ok((
            files
                .iter()
                .map(|f| f.rel.split_once('/').map(|(class, _)| class.to_string()))
                .collect(),
            Vec::new(),
        )),
        LabelSource::Csv { path, column } => {
            let mut rows = read_csv(path, column)?;
            let mut names = Vec::with_capacity(files.len());
            for f in files {
                let base = f.rel.rsplit('/').next().unwrap_or(&f.rel);
                let label = rows.remove(&f.rel).or_else(|| rows.remove(base));
                names.push(label);
            }
            Ok((names, rows.into_keys().collect()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_follow_rfc_4180() {
        assert_eq!(csv_fields("a,b,c"), ["a", "b", "c"]);
        assert_eq!(
            csv_fields(r#"x.png,"Smileys, Emotion","say ""hi""""#),
            ["x.png", "Smileys, Emotion", r#"say "hi""#]
        );
        assert_eq!(csv_fields("a,,"), ["a", "", ""]);
    }
}
