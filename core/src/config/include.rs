//! `include = ["conf.d/*.toml"]`: one configuration read from several
//! files, merged into one document before it is checked.
//!
//! The rules (docs/configuration.md, "Including files"):
//!
//! - `include` is a top-level key: a list of file names or patterns,
//!   relative to the directory of the file that names them. `*` and `?`
//!   may appear in the file-name part only; a wildcard never matches a
//!   leading `.`; the files a pattern matches are taken in byte order of
//!   their names. A pattern matching nothing is fine (an empty `conf.d`);
//!   a plain name that does not exist, or a directory that cannot be
//!   listed, is an error.
//! - Included files may include further files. A file read twice (a
//!   cycle, or two patterns matching it) is an error.
//! - Merging: what the included files hold comes first, in the order of
//!   the patterns and their matches, then the including file's own keys.
//!   Tables merge key by key; arrays of tables (`[[service]]`, `[[user]]`,
//!   `[[rule]]`) append; any other key set in two files is an error
//!   naming both places.
//!
//! All I/O is the runtime's, through [`Files`].

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use super::doc::{self, Entry, Kind, Node};
use super::ConfigError;

/// The file access loading a configuration needs, provided by a runtime.
pub trait Files {
    /// The whole file as UTF-8 text.
    fn read(&mut self, path: &Path) -> io::Result<String>;
    /// The names of the entries of directory `dir`, in any order.
    fn list(&mut self, dir: &Path) -> io::Result<Vec<OsString>>;
    /// The wall-clock time, for refusing an expired certificate; `None`
    /// (the default): certificates are not checked for expiry.
    fn now(&self) -> Option<std::time::SystemTime> {
        None
    }
}

/// Every file of one configuration laid end to end: a span in a
/// [`Node`] is an offset into this joint text, and finds its file here.
#[derive(Debug, Default)]
pub(super) struct Sources {
    files: Vec<Source>,
}

#[derive(Debug)]
struct Source {
    /// The name errors use: the path as given or joined.
    name: String,
    text: String,
    /// Where the text starts in the joint text.
    base: usize,
}

impl Sources {
    /// Adds a file; returns the offset its text starts at.
    fn add(&mut self, name: String, text: String) -> usize {
        let base = self.next_base();
        self.files.push(Source { name, text, base });
        base
    }

    /// The offset the next file added will start at: one offset of room
    /// after each file, so that a span at a file's very end still falls in
    /// that file.
    fn next_base(&self) -> usize {
        self.files.last().map_or(0, |f| f.base + f.text.len() + 1)
    }

    /// One text, on its own.
    pub fn single(name: &str, text: &str) -> Sources {
        let mut s = Sources::default();
        s.add(name.to_string(), text.to_string());
        s
    }

    pub fn text(&self, index: usize) -> &str {
        &self.files[index].text
    }

    /// The file holding `offset`, and the offset within it.
    fn find(&self, offset: usize) -> (usize, usize) {
        let i = self
            .files
            .iter()
            .rposition(|f| f.base <= offset)
            .unwrap_or(0);
        let base = self.files.get(i).map_or(0, |f| f.base);
        (i, offset.saturating_sub(base))
    }

    /// An error at `offset`, in the file that holds it.
    pub fn error(&self, offset: usize, message: impl Into<String>) -> ConfigError {
        let (i, at) = self.find(offset);
        match self.files.get(i) {
            Some(f) => ConfigError::at(&f.text, &f.name, at, message),
            // No file read yet: no place to point at.
            None => ConfigError::at("", "", 0, message),
        }
    }

    /// `FILE:LINE` of `offset`.
    pub fn file_line(&self, offset: usize) -> String {
        let e = self.error(offset, "");
        format!("{}:{}", e.file, e.line)
    }

    /// `FILE:LINE:COLUMN` of `offset`.
    pub fn place(&self, offset: usize) -> String {
        let e = self.error(offset, "");
        format!("{}:{}:{}", e.file, e.line, e.column)
    }

    /// Where `earlier` is, as seen from an error at `now`: `line N` in
    /// the same file, `line N of FILE` in another.
    pub fn line_from(&self, earlier: usize, now: usize) -> String {
        let e = self.error(earlier, "");
        if self.find(earlier).0 == self.find(now).0 {
            format!("line {}", e.line)
        } else {
            format!("line {} of {}", e.line, e.file)
        }
    }
}

/// Why a configuration did not load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// The configuration file itself could not be read.
    #[error("{file}: cannot read the configuration file: {reason}")]
    Read { file: String, reason: String },
    /// It (or a file it includes) is not a valid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// A configuration read from its file and the files that includes.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: super::Config,
    /// The configuration as one TOML text: the file as written when it
    /// includes nothing, else every file merged (what the flight recorder
    /// keeps, and [`super::parse`] reads back to the same [`super::Config`]).
    pub text: String,
    /// Where each of `config.rules` was written, `FILE:LINE` of its
    /// `[[rule]]` (in the file that holds it, after `include` merged them).
    pub rules_at: Vec<String>,
}

/// `FILE:LINE` of each `[[rule]]` of a document, in order.
pub(super) fn rule_places(root: &Node, sources: &Sources) -> Vec<String> {
    let Kind::Table(entries) = &root.kind else {
        return Vec::new();
    };
    match entries
        .iter()
        .find(|e| e.key == "rule")
        .map(|e| &e.value.kind)
    {
        Some(Kind::Array(rules)) => rules
            .iter()
            .map(|r| sources.file_line(r.span.start))
            .collect(),
        _ => Vec::new(),
    }
}

/// `FILE:LINE` of each `[[rule]]` of one configuration text (no
/// `include`), as [`Loaded::rules_at`] gives them for a file; empty when
/// the text does not parse.
pub fn rule_lines(text: &str, file: &str) -> Vec<String> {
    let sources = Sources::single(file, text);
    doc::parse(text, 0)
        .map(|root| rule_places(&root, &sources))
        .unwrap_or_default()
}

/// Reads the configuration file `path` and every file it includes,
/// through `files`, and checks the result.
pub fn load(path: &Path, files: &mut dyn Files) -> Result<Loaded, LoadError> {
    let text = files.read(path).map_err(|e| LoadError::Read {
        file: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut loader = Loader {
        files,
        sources: Sources::default(),
        seen: HashMap::new(),
        included: false,
    };
    loader.seen.insert(normal(path), None);
    let root = loader.file(path, text)?;
    let sources = loader.sources;
    let text = if !loader.included {
        sources.text(0).to_string()
    } else {
        toml::to_string(&root.to_value()).map_err(|e| {
            sources.error(
                0,
                format!("cannot write the merged configuration as one text: {e}"),
            )
        })?
    };
    let rules_at = rule_places(&root, &sources);
    let config = super::validate::check(root, &sources, true, Some(loader.files))?;
    Ok(Loaded {
        config,
        text,
        rules_at,
    })
}

/// Removes the top-level `include` key of a file's tree.
pub(super) fn take_include(root: &mut Node) -> Option<Entry> {
    let entries = root.entries_mut()?;
    let i = entries.iter().position(|e| e.key == "include")?;
    Some(entries.remove(i))
}

/// The message of a TOML syntax or type error, on one line.
pub(super) fn one_line(message: &str) -> String {
    let m = message.trim().replace('\n', "; ");
    if m.is_empty() {
        // The toml crate leaves some syntax errors without words.
        "this is not valid TOML here (a control character, or a carriage return without a \
         line feed?)"
            .to_string()
    } else {
        m
    }
}

struct Loader<'a> {
    files: &'a mut dyn Files,
    sources: Sources,
    /// Every file read (by its path with `.` and `..` resolved), and the
    /// offset of the include pattern that brought it in (none: the
    /// configuration file itself).
    seen: HashMap<PathBuf, Option<usize>>,
    /// Whether any file had an `include` (the one text must then be
    /// written out, without it).
    included: bool,
}

impl Loader<'_> {
    /// The tree of the file at `path`, whose text is `text`, with what it
    /// includes merged in.
    fn file(&mut self, path: &Path, text: String) -> Result<Node, ConfigError> {
        let parsed = doc::parse(&text, self.sources.next_base());
        self.sources.add(path.display().to_string(), text);
        let mut own = parsed.map_err(|e| self.sources.error(e.span.start, one_line(&e.message)))?;
        let Some(include) = take_include(&mut own) else {
            return Ok(own);
        };
        self.included = true;
        let dir = path.parent().unwrap_or(Path::new(""));
        let mut merged = Node {
            span: own.span.clone(),
            kind: Kind::Table(Vec::new()),
        };
        for (pattern, span) in self.patterns(&include)? {
            for p in self.expand(&pattern, dir, &span)? {
                let key = normal(&p);
                if let Some(first) = self.seen.get(&key) {
                    let what = match first {
                        None => "the configuration file itself".to_string(),
                        Some(at) => format!("already included by {}", self.sources.place(*at)),
                    };
                    return Err(self.sources.error(
                        span.start,
                        format!(
                            "include: {} is {what}; a file may be read only once",
                            p.display()
                        ),
                    ));
                }
                self.seen.insert(key, Some(span.start));
                let text = self.files.read(&p).map_err(|e| {
                    self.sources.error(
                        span.start,
                        format!("include: cannot read {}: {e}", p.display()),
                    )
                })?;
                let tree = self.file(&p, text)?;
                merge(&mut merged, tree, "", &self.sources)?;
            }
        }
        merge(&mut merged, own, "", &self.sources)?;
        Ok(merged)
    }

    /// The patterns of an `include` entry, each with its span.
    fn patterns(&self, include: &Entry) -> Result<Vec<(String, Range<usize>)>, ConfigError> {
        const HOW: &str = "include must be a list of file names or patterns, e.g. \
                           include = [\"conf.d/*.toml\"]";
        let Kind::Array(items) = &include.value.kind else {
            return Err(self.sources.error(include.value.span.start, HOW));
        };
        items
            .iter()
            .map(|n| match &n.kind {
                Kind::Leaf(toml::Value::String(s)) if !s.is_empty() => {
                    Ok((s.clone(), n.span.clone()))
                }
                _ => Err(self.sources.error(n.span.start, HOW)),
            })
            .collect()
    }

    /// The files `pattern` (relative to `dir`) names, in order.
    fn expand(
        &mut self,
        pattern: &str,
        dir: &Path,
        span: &Range<usize>,
    ) -> Result<Vec<PathBuf>, ConfigError> {
        let full = dir.join(pattern);
        let (Some(parent), Some(name)) = (full.parent(), full.file_name()) else {
            return Err(self.sources.error(
                span.start,
                format!("include: \"{pattern}\" names no file; name files, e.g. \"conf.d/*.toml\""),
            ));
        };
        if pattern.ends_with('/') {
            return Err(self.sources.error(
                span.start,
                format!(
                    "include: \"{pattern}\" names a directory; name its files, e.g. \
                     \"{pattern}*.toml\""
                ),
            ));
        }
        let name = name.to_string_lossy();
        if parent.to_string_lossy().contains(['*', '?']) {
            return Err(self.sources.error(
                span.start,
                format!(
                    "include: \"{pattern}\": * and ? work in the file name only; list each \
                     directory in a pattern of its own"
                ),
            ));
        }
        if !name.contains(['*', '?']) {
            return Ok(vec![full.clone()]);
        }
        let listed = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        let names = self.files.list(listed).map_err(|e| {
            self.sources.error(
                span.start,
                format!(
                    "include: cannot list the directory {}: {e}",
                    listed.display()
                ),
            )
        })?;
        let mut hits: Vec<OsString> = names
            .into_iter()
            .filter(|n| wildcard_match(&name, &n.to_string_lossy()))
            .collect();
        // Byte order of the names (as `LC_ALL=C ls` sorts them).
        hits.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
        Ok(hits.into_iter().map(|n| parent.join(n)).collect())
    }
}

/// `path` with `.` dropped and `..` taken back, without asking the file
/// system (symbolic links are not followed).
fn normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Whether `name` matches `pattern`, where `*` is any run of characters
/// and `?` any one character; a leading `.` of `name` must be matched by
/// a `.` (so `*.toml` skips hidden files, as a shell does).
pub(super) fn wildcard_match(pattern: &str, name: &str) -> bool {
    if name.starts_with('.') && !pattern.starts_with('.') {
        return false;
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    // Where the last `*` was, and where in `name` it was tried up to.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&c) if c == '?' || c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Merges the table `from` into the table `into` (see the module docs);
/// `prefix` is the dotted name of the table, for messages.
fn merge(into: &mut Node, from: Node, prefix: &str, sources: &Sources) -> Result<(), ConfigError> {
    let Kind::Table(from) = from.kind else {
        return Ok(());
    };
    let Some(entries) = into.entries_mut() else {
        return Ok(());
    };
    for e in from {
        let name = if prefix.is_empty() {
            e.key.clone()
        } else {
            format!("{prefix}.{}", e.key)
        };
        let Some(x) = entries.iter_mut().find(|x| x.key == e.key) else {
            entries.push(e);
            continue;
        };
        let both_tables = matches!(
            (&x.value.kind, &e.value.kind),
            (Kind::Table(_), Kind::Table(_))
        );
        if both_tables {
            merge(&mut x.value, e.value, &name, sources)?;
        } else if x.value.is_table_array() && e.value.is_table_array() {
            if let (Kind::Array(a), Kind::Array(b)) = (&mut x.value.kind, e.value.kind) {
                a.extend(b);
            }
        } else {
            return Err(sources.error(
                e.key_span.start,
                format!(
                    "{name} is set twice: here and at {}; set it in one file only",
                    sources.place(x.key_span.start)
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::{parse, Config};

    /// Files in memory; `list` answers for every directory holding one.
    #[derive(Default)]
    struct Mem(BTreeMap<PathBuf, String>);

    impl Mem {
        fn with(files: &[(&str, &str)]) -> Mem {
            Mem(files
                .iter()
                .map(|(p, t)| (PathBuf::from(p), t.to_string()))
                .collect())
        }
    }

    impl Files for Mem {
        fn read(&mut self, path: &Path) -> io::Result<String> {
            // As the file system would resolve `..`.
            self.0
                .get(&normal(path))
                .cloned()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))
        }
        fn list(&mut self, dir: &Path) -> io::Result<Vec<OsString>> {
            let names: Vec<OsString> = self
                .0
                .keys()
                .filter(|p| p.parent() == Some(normal(dir).as_path()))
                .filter_map(|p| p.file_name().map(|n| n.to_os_string()))
                .collect();
            if names.is_empty() {
                return Err(io::Error::new(io::ErrorKind::NotFound, "no such directory"));
            }
            Ok(names)
        }
    }

    fn svc(name: &str, port: u16) -> String {
        format!(
            "[[service]]\nname = \"{name}\"\nkind = \"mapped\"\nport = {port}\n\
             destination = \"10.0.0.1:22\"\n"
        )
    }

    fn load_mem(files: &[(&str, &str)]) -> Result<Loaded, LoadError> {
        load(Path::new(files[0].0), &mut Mem::with(files))
    }

    fn ok(files: &[(&str, &str)]) -> Config {
        load_mem(files).unwrap_or_else(|e| panic!("{e}")).config
    }

    fn err(files: &[(&str, &str)]) -> ConfigError {
        match load_mem(files) {
            Ok(_) => panic!("{files:?} should not load"),
            Err(LoadError::Config(e)) => e,
            Err(e) => panic!("expected a configuration error, got {e}"),
        }
    }

    fn names(c: &Config) -> Vec<&str> {
        c.services.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn each_rule_knows_its_file_and_line() {
        let main = format!(
            "include = [\"conf.d/*.toml\"]\n{}\n[[rule]]\naction = \"deny\"\n",
            svc("main", 1)
        );
        let part = "# a comment\n\n[[rule]]\naction = \"allow\"\nservices = [\"main\"]\n\n\
                    [[rule]]\naction = \"deny\"\n";
        let l = load_mem(&[
            ("/etc/p/portico.toml", &main),
            ("/etc/p/conf.d/a.toml", part),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l.config.rules.len(), 3);
        // The included file's rules come first, each at its own header.
        assert_eq!(
            l.rules_at,
            [
                "/etc/p/conf.d/a.toml:3",
                "/etc/p/conf.d/a.toml:7",
                "/etc/p/portico.toml:8"
            ]
        );
        let one = "[[service]]\nname = \"x\"\nkind = \"http\"\nport = 1\n[[rule]]\n\
                   action = \"allow\"\n";
        assert_eq!(rule_lines(one, "one.toml"), ["one.toml:5"]);
        assert!(rule_lines("not [ toml", "bad.toml").is_empty());
    }

    #[test]
    fn included_files_come_first_in_name_order_then_the_file_itself() {
        let main = format!("include = [\"conf.d/*.toml\"]\n{}", svc("main", 1));
        let c = ok(&[
            ("/etc/p/portico.toml", &main),
            ("/etc/p/conf.d/20-b.toml", &svc("b", 3)),
            ("/etc/p/conf.d/10-a.toml", &svc("a", 2)),
            ("/etc/p/conf.d/B.toml", &svc("upper", 4)),
            ("/etc/p/conf.d/.hidden.toml", &svc("hidden", 5)),
            ("/etc/p/conf.d/notes.txt", "not toml"),
        ]);
        // Byte order: digits, then upper case; hidden and non-matching skipped.
        assert_eq!(names(&c), ["a", "b", "upper", "main"]);
    }

    #[test]
    fn patterns_apply_in_order_and_relative_to_the_including_file() {
        let main = "include = [\"z.toml\", \"sub/a.toml\"]\n";
        let c = ok(&[
            ("cfg/main.toml", main),
            ("cfg/z.toml", &svc("z", 1)),
            ("cfg/sub/a.toml", "include = [\"../y.toml\"]\n"),
            ("cfg/y.toml", &svc("y", 2)),
        ]);
        assert_eq!(names(&c), ["z", "y"]);
    }

    #[test]
    fn tables_merge_key_by_key() {
        let main = format!(
            "include = [\"limits.toml\"]\n[limits]\nidle_timeout = \"7s\"\n{}",
            svc("m", 1)
        );
        let c = ok(&[
            ("main.toml", &main),
            (
                "limits.toml",
                "[limits]\nbuffer = \"8KiB\"\n[log]\nformat = \"json\"\n",
            ),
        ]);
        assert_eq!(c.limits.idle_timeout, std::time::Duration::from_secs(7));
        assert_eq!(c.limits.buffer, 8 * 1024);
        assert_eq!(c.log.format, crate::config::LogFormat::Json);
    }

    #[test]
    fn a_key_set_in_two_files_names_both() {
        let main = format!(
            "include = [\"a.toml\"]\n[limits]\nidle_timeout = \"7s\"\n{}",
            svc("m", 1)
        );
        let e = err(&[
            ("main.toml", &main),
            ("a.toml", "\n[limits]\nidle_timeout = \"9s\"\n"),
        ]);
        assert_eq!((e.file.as_str(), e.line, e.column), ("main.toml", 3, 1));
        assert!(
            e.message
                .contains("limits.idle_timeout is set twice: here and at a.toml:3:1"),
            "{e}"
        );
        // A plain array is a key like any other: set once.
        let main = format!(
            "include = [\"a.toml\"]\n[network]\ninternal = [\"127.0.0.1\"]\n{}",
            svc("m", 1)
        );
        let e = err(&[
            ("main.toml", &main),
            ("a.toml", "[network]\ninternal = [\"10.0.0.1\"]\n"),
        ]);
        assert!(e.message.contains("network.internal is set twice"), "{e}");
    }

    #[test]
    fn an_error_in_an_included_file_names_it_with_line_and_column() {
        let main = format!("include = [\"conf.d/*.toml\"]\n{}", svc("m", 1));
        let e = err(&[
            ("/c/main.toml", &main),
            (
                "/c/conf.d/a.toml",
                "\n\n[[service]]\nname = \"x\"\nkind = \"mapped\"\nport = 70000\n",
            ),
        ]);
        assert_eq!(
            (e.file.as_str(), e.line, e.column),
            ("/c/conf.d/a.toml", 6, 8)
        );
        assert!(e.message.contains("out of range"), "{e}");

        let e = err(&[("/c/main.toml", &main), ("/c/conf.d/a.toml", "[network\n")]);
        assert_eq!((e.file.as_str(), e.line), ("/c/conf.d/a.toml", 1));

        let e = err(&[
            ("/c/main.toml", &main),
            ("/c/conf.d/a.toml", "[limits]\nbuffr = 1\n"),
        ]);
        assert_eq!(
            (e.file.as_str(), e.line, e.column),
            ("/c/conf.d/a.toml", 2, 1)
        );
        assert!(e.message.contains("unknown field `buffr`"), "{e}");
    }

    #[test]
    fn a_service_defined_in_two_files_names_the_first() {
        let main = format!("include = [\"a.toml\"]\n\n{}", svc("m", 1));
        let e = err(&[
            ("main.toml", &main),
            ("a.toml", &format!("\n{}", svc("m", 2))),
        ]);
        assert_eq!((e.file.as_str(), e.line), ("main.toml", 4));
        assert!(e.message.contains("(first on line 3 of a.toml)"), "{e}");
    }

    #[test]
    fn what_a_pattern_may_match() {
        let main = format!("include = [\"conf.d/*.toml\"]\n{}", svc("m", 1));
        // A pattern matching nothing is fine.
        let c = ok(&[("main.toml", &main), ("conf.d/x.conf", "")]);
        assert_eq!(names(&c), ["m"]);
        // A directory that cannot be listed is not.
        let e = err(&[("main.toml", &main)]);
        assert_eq!((e.line, e.column), (1, 12));
        assert!(
            e.message.contains("cannot list the directory conf.d"),
            "{e}"
        );
        // A plain name must exist.
        let main = format!("include = [\"extra.toml\"]\n{}", svc("m", 1));
        let e = err(&[("main.toml", &main)]);
        assert_eq!((e.file.as_str(), e.line, e.column), ("main.toml", 1, 12));
        assert!(e.message.contains("cannot read extra.toml"), "{e}");
        // Wildcards in a directory part, and directories, are refused.
        for (p, want) in [
            ("*/x.toml", "file name only"),
            ("conf.d/", "names a directory"),
            ("", "must be a list"),
        ] {
            let main = format!("include = [\"{p}\"]\n{}", svc("m", 1));
            let e = err(&[("main.toml", &main), ("conf.d/x.toml", "")]);
            assert!(e.message.contains(want), "{p:?}: {e}");
        }
        let e = err(&[("main.toml", "include = \"conf.d/*.toml\"\n")]);
        assert!(e.message.contains("must be a list"), "{e}");
    }

    #[test]
    fn a_file_is_read_once() {
        let e = err(&[
            ("main.toml", "include = [\"a.toml\"]\n"),
            ("a.toml", "include = [\"main.toml\"]\n"),
        ]);
        assert_eq!(e.file, "a.toml");
        assert!(e.message.contains("the configuration file itself"), "{e}");
        let e = err(&[
            ("main.toml", "include = [\"a.toml\", \"./a.toml\"]\n"),
            ("a.toml", &svc("a", 1)),
        ]);
        assert_eq!((e.line, e.column), (1, 22));
        assert!(
            e.message.contains("already included by main.toml:1:12"),
            "{e}"
        );
    }

    #[test]
    fn the_merged_text_reads_back_to_the_same_configuration() {
        let main = format!(
            "include = [\"conf.d/*.toml\"]\n[limits]\nidle_timeout = \"7s\"\n{}",
            svc("main", 1)
        );
        let files = [
            ("main.toml", main.as_str()),
            (
                "conf.d/a.toml",
                "[[rule]]\naction = \"allow\"\nports = [22, \"1-9\"]\n",
            ),
            (
                "conf.d/b.toml",
                "[[user]]\nname = \"u\"\npassword = \"plain:p\"\n",
            ),
        ];
        let loaded = load_mem(&files).unwrap_or_else(|e| panic!("{e}"));
        assert!(!loaded.text.contains("include"), "{}", loaded.text);
        let again = parse(&loaded.text, "merged").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again, loaded.config);
        // Without include, the text is the file as written.
        let plain = svc("p", 1);
        let loaded = load_mem(&[("p.toml", &plain)]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded.text, plain);
    }

    #[test]
    fn include_needs_a_file() {
        let e = parse("include = [\"a.toml\"]\n", "t").expect_err("no directory to read");
        assert_eq!((e.line, e.column), (1, 1));
        let r = load(Path::new("missing.toml"), &mut Mem::default());
        assert!(matches!(r, Err(LoadError::Read { .. })), "{r:?}");
    }

    #[test]
    fn wildcards() {
        for (p, n, want) in [
            ("*.toml", "a.toml", true),
            ("*.toml", "a.toml.bak", false),
            ("*.toml", ".a.toml", false),
            (".*.toml", ".a.toml", true),
            ("??-*.toml", "10-web.toml", true),
            ("??-*.toml", "1-web.toml", false),
            ("*", "x", true),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            ("exact.toml", "exact.toml", true),
            ("é?.toml", "éé.toml", true),
        ] {
            assert_eq!(wildcard_match(p, n), want, "{p} ~ {n}");
        }
    }
}
