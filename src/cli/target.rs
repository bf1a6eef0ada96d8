//! Branches as users type them: `<project>/<branch>`, or a bare `<branch>` of the default
//! project (`velo use`, `VELO_PROJECT`), resolved once the velo home can be read.

use std::fmt;
use std::str::FromStr;

use anyhow::Result;

use crate::names::{BranchName, BranchRef, NameError, ProjectName};
use crate::ops::{Ctx, current};

/// A branch argument: with its project, or without (the default project's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchArg {
    project: Option<ProjectName>,
    branch: BranchName,
}

impl FromStr for BranchArg {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        if s.contains('/') {
            let r: BranchRef = s.parse()?;
            return Ok(Self {
                project: Some(r.project),
                branch: r.branch,
            });
        }
        Ok(Self {
            project: None,
            branch: s.parse()?,
        })
    }
}

impl fmt::Display for BranchArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.project {
            Some(p) => write!(f, "{p}/{}", self.branch),
            None => write!(f, "{}", self.branch),
        }
    }
}

impl BranchArg {
    /// The branch it names: its own project, else the default project.
    pub fn resolve(&self, ctx: &Ctx) -> Result<BranchRef> {
        match &self.project {
            Some(p) => Ok(BranchRef::new(p.clone(), self.branch.clone())),
            None => current::in_default_project(ctx, &self.branch),
        }
    }

    /// The branch it names, a bare name being one of `project` (for `--parent`, whose
    /// project is the new branch's).
    pub fn within(&self, project: &ProjectName) -> BranchRef {
        let p = self.project.clone().unwrap_or_else(|| project.clone());
        BranchRef::new(p, self.branch.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_and_without_a_project() {
        let full: BranchArg = "demo/dev".parse().unwrap();
        assert_eq!(full.to_string(), "demo/dev");
        let bare: BranchArg = "dev".parse().unwrap();
        assert_eq!(bare.to_string(), "dev");
        let other: ProjectName = "other".parse().unwrap();
        assert_eq!(bare.within(&other).to_string(), "other/dev");
        assert_eq!(full.within(&other).to_string(), "demo/dev");
        for bad in ["Dev", "a/b/c", "demo/", "/dev", ""] {
            assert!(bad.parse::<BranchArg>().is_err(), "{bad}");
        }
    }
}
