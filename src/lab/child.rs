//! `fuchun stylize` run in a child process with the bench's model options: its peak RSS (the process's own, from
//! wait4's rusage, so nothing of the bench's memory is counted) and wall time.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};

use super::bench_args::BenchArgs;
use crate::imageio;

/// Run `fuchun stylize` on `content` in a child process with this bench's model options; its peak RSS (bytes, from
/// wait4's rusage) and wall time.
/// `extra` arguments come last (the last of an option given twice wins).
pub fn child_stylize_peak_rss(
    args: &BenchArgs,
    content: &crate::imageio::Planar,
    size: usize,
    extra: &[String],
) -> Result<(f64, f64)> {
    let dir = tempfile_dir()?;
    let input = dir.join("content.png");
    std::fs::write(&input, imageio::encode(content, imageio::OutputFormat::Png)?)?;
    let exe = std::env::current_exe().context("locating the fuchun binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("stylize")
        .arg("--model")
        .arg(args.model.cli_model_dir()?)
        .arg("--content")
        .arg(&input)
        .arg("--style")
        .arg(&args.style)
        .arg("-o")
        .arg(dir.join("out.png"))
        .args(["--image-size", &size.to_string(), "--iterations", &args.memory_iterations.to_string(), "--tol", "0"])
        .args(["--hist-every", &args.hist_every.to_string(), "--provider", &args.model.provider.to_string()])
        .args(["--threads", &args.model.threads.to_string()])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    if let Some(l) = &args.model.ort_library {
        cmd.arg("--ort-library").arg(l);
    }
    let t = Instant::now();
    let child = cmd.spawn().context("starting `fuchun stylize`")?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let secs = t.elapsed().as_secs_f64();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    let _ = std::fs::remove_dir_all(&dir);
    if r != pid as libc::pid_t || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        anyhow::bail!("`fuchun stylize` for the memory figure failed: {}", stderr.trim());
    }
    Ok((usage.ru_maxrss as f64 * 1024.0, secs))
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("fuchun-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
