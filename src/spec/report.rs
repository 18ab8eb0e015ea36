//! Problems with a spec, and where they are: the public [`Problem`] and [`SpecError`], the
//! [`Field`] names every stage uses to point at a value, and the [`Report`] that locates a
//! problem — at `file:line:column` when the spec came from TOML (lowering records every field's
//! byte span), or by its path such as `containers[1].name` when the spec was built in Rust.
//!
//! It knows nothing of TOML shapes or of the rules themselves: `lower` records spans and
//! reports what the model cannot hold, `check` reports what the rules forbid.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One thing wrong with a spec, located as precisely as the spec's origin allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The spec file, when the spec came from one.
    pub file: Option<PathBuf>,
    /// 1-based line of the offending text, when the spec came from TOML.
    pub line: Option<usize>,
    /// 1-based column (in characters) of the offending text, when the spec came from TOML.
    pub column: Option<usize>,
    /// What is wrong and what to change.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The `file:line:column: message` shape is what editors and terminals turn into links.
        match (&self.file, self.line, self.column) {
            (Some(file), Some(line), Some(column)) => {
                write!(f, "{}:{line}:{column}: {}", file.display(), self.message)
            }
            (Some(file), Some(line), None) => {
                write!(f, "{}:{line}: {}", file.display(), self.message)
            }
            (Some(file), None, _) => write!(f, "{}: {}", file.display(), self.message),
            (None, _, _) => f.write_str(&self.message),
        }
    }
}

/// Why a spec was rejected: every problem found, not just the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    problems: Vec<Problem>,
}

impl SpecError {
    /// Every problem found, in source order when the spec came from TOML.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    pub(super) fn single(problem: Problem) -> Self {
        SpecError {
            problems: vec![problem],
        }
    }

    /// A problem with the spec file as a whole (it cannot be read, say).
    pub(super) fn about_file(file: &Path, message: String) -> Self {
        SpecError::single(Problem {
            file: Some(file.to_path_buf()),
            line: None,
            column: None,
            message,
        })
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, problem) in self.problems.iter().enumerate() {
            if index > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecError {}

// ---- naming fields -------------------------------------------------------------------------

/// A field of a pod spec: the key under which lowering records a span, and the name a problem
/// carries when there is no span.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Field {
    PodName,
    Containers,
    Backoff(BackoffField),
    ExposePort,
    ExposeHostname(usize),
    Volume(usize, VolumeField),
    Container(ContainerAt, ContainerField),
    TerminationGracePeriod,
    ReadinessWait,
    /// A key inside another field's table, e.g. `containers[0].liveness_probe.period`.
    Nested(Box<Field>, String),
    /// `faults[i]` (its keys are `Nested` under it).
    Fault(usize),
}

/// Which probe of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum ProbeKind {
    Startup,
    Readiness,
    Liveness,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum BackoffField {
    Initial,
    Max,
    ResetAfter,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum VolumeField {
    Name,
    /// The volume's source as a whole (`empty_dir` / `host_path` / `secret`).
    Source,
    HostPath,
    SecretKey(String),
}

/// Where a container sits in the spec: which list, and its index there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct ContainerAt {
    pub(super) list: ContainerList,
    pub(super) index: usize,
}

impl ContainerAt {
    pub(super) fn init(index: usize) -> Self {
        ContainerAt {
            list: ContainerList::Init,
            index,
        }
    }

    pub(super) fn main(index: usize) -> Self {
        ContainerAt {
            list: ContainerList::Main,
            index,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum ContainerList {
    Init,
    Main,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum ContainerField {
    Name,
    Component,
    Port(usize),
    EnvName(String),
    Mount(usize, MountField),
    OutboundHost(usize),
    Memory,
    Cpu,
    DependsOn(usize),
    Probe(ProbeKind),
    Http,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum MountField {
    Volume,
    MountPath,
    ReadOnly,
}

impl fmt::Display for Field {
    /// The field's path as a TOML reader would spell it, e.g. `containers[1].ports[0]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::PodName => f.write_str("name"),
            Field::Containers => f.write_str("containers"),
            Field::Backoff(which) => {
                let key = match which {
                    BackoffField::Initial => "initial",
                    BackoffField::Max => "max",
                    BackoffField::ResetAfter => "reset_after",
                };
                write!(f, "restart_backoff.{key}")
            }
            Field::ExposePort => f.write_str("expose.port"),
            Field::ExposeHostname(index) => write!(f, "expose.hostnames[{index}]"),
            Field::TerminationGracePeriod => f.write_str("termination_grace_period"),
            Field::ReadinessWait => f.write_str("readiness_wait"),
            Field::Nested(parent, key) => write!(f, "{parent}.{key}"),
            Field::Fault(index) => write!(f, "faults[{index}]"),
            Field::Volume(index, which) => {
                write!(f, "volumes[{index}]")?;
                match which {
                    VolumeField::Name => f.write_str(".name"),
                    VolumeField::Source => Ok(()),
                    VolumeField::HostPath => f.write_str(".host_path"),
                    VolumeField::SecretKey(key) => write!(f, ".secret[{key:?}]"),
                }
            }
            Field::Container(at, which) => {
                let list = match at.list {
                    ContainerList::Init => "init_containers",
                    ContainerList::Main => "containers",
                };
                write!(f, "{list}[{}]", at.index)?;
                match which {
                    ContainerField::Name => f.write_str(".name"),
                    ContainerField::Component => f.write_str(".component"),
                    ContainerField::Port(index) => write!(f, ".ports[{index}]"),
                    ContainerField::EnvName(name) => write!(f, ".env[{name:?}]"),
                    ContainerField::Mount(index, mount_field) => {
                        let key = match mount_field {
                            MountField::Volume => "volume",
                            MountField::MountPath => "mount_path",
                            MountField::ReadOnly => "read_only",
                        };
                        write!(f, ".volume_mounts[{index}].{key}")
                    }
                    ContainerField::OutboundHost(index) => {
                        write!(f, ".allowed_outbound_hosts[{index}]")
                    }
                    ContainerField::Memory => f.write_str(".resources.memory"),
                    ContainerField::Cpu => f.write_str(".resources.cpu"),
                    ContainerField::DependsOn(index) => write!(f, ".depends_on[{index}]"),
                    ContainerField::Probe(ProbeKind::Startup) => f.write_str(".startup_probe"),
                    ContainerField::Probe(ProbeKind::Readiness) => f.write_str(".readiness_probe"),
                    ContainerField::Probe(ProbeKind::Liveness) => f.write_str(".liveness_probe"),
                    ContainerField::Http => f.write_str(".http"),
                }
            }
        }
    }
}

/// Collects problems and locates them: by source span when the spec came from TOML, by field
/// path otherwise.
pub(super) struct Report<'a> {
    file: Option<&'a Path>,
    /// The TOML text, when there is one; spans index into it.
    source: Option<&'a str>,
    spans: HashMap<Field, Range<usize>>,
    /// One problem per field is enough; a second one would usually be a consequence of the first
    /// (an unparsable `initial` is not also "longer than max").
    fields_with_problems: HashSet<Field>,
    problems: Vec<Problem>,
}

impl<'a> Report<'a> {
    pub(super) fn for_toml(file: &'a Path, source: &'a str) -> Self {
        Report {
            file: Some(file),
            source: Some(source),
            spans: HashMap::new(),
            fields_with_problems: HashSet::new(),
            problems: Vec::new(),
        }
    }

    pub(super) fn for_model(file: Option<&'a Path>) -> Self {
        Report {
            file,
            source: None,
            spans: HashMap::new(),
            fields_with_problems: HashSet::new(),
            problems: Vec::new(),
        }
    }

    pub(super) fn record(&mut self, field: Field, span: Range<usize>) {
        self.spans.insert(field, span);
    }

    /// Reports a problem with `field`, unless that field already has one.
    pub(super) fn push(&mut self, field: &Field, message: String) {
        if !self.fields_with_problems.insert(field.clone()) {
            return;
        }
        let problem = match self.spans.get(field).cloned() {
            Some(span) => self.problem_at(Some(span), message),
            // Without a position, the field's path is what tells the reader where to look.
            None => self.problem_at(None, format!("{field}: {message}")),
        };
        self.problems.push(problem);
    }

    /// Reports a problem at a span no model field owns (a value that lowering had to drop).
    pub(super) fn push_at_span(&mut self, span: Range<usize>, message: String) {
        let problem = self.problem_at(Some(span), message);
        self.problems.push(problem);
    }

    /// A problem at byte `span` of the TOML text (unlocated if either is unknown).
    pub(super) fn problem_at(&self, span: Option<Range<usize>>, message: String) -> Problem {
        let position = span
            .zip(self.source)
            .map(|(span, source)| line_and_column(source, span.start));
        Problem {
            file: self.file.map(Path::to_path_buf),
            line: position.map(|(line, _)| line),
            column: position.map(|(_, column)| column),
            message,
        }
    }

    /// How a message refers to another field: its line when known, its path otherwise.
    pub(super) fn refer_to(&self, field: &Field) -> String {
        match (self.spans.get(field), self.source) {
            (Some(span), Some(source)) => format!("line {}", line_and_column(source, span.start).0),
            _ => format!("{field}"),
        }
    }

    pub(super) fn finish(mut self) -> Result<(), SpecError> {
        if self.problems.is_empty() {
            return Ok(());
        }
        // Source order reads best; problems without a position keep the order they were found.
        self.problems
            .sort_by_key(|problem| (problem.line.is_none(), problem.line, problem.column));
        Err(SpecError {
            problems: self.problems,
        })
    }
}

/// The 1-based line and character column of byte `offset` in `source`.
pub(super) fn line_and_column(source: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &source[..offset];
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}
