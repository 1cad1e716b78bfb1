//! Shared helpers for the integration tests: paths of the exported test graphs, the binary, .npy files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Small random-weight graphs (`make test-models`).
pub fn test_model() -> PathBuf {
    let p = root().join("models/out/test-random");
    assert!(p.join("manifest.json").is_file(), "run `make test-models` first (missing {})", p.display());
    p
}

/// The real default weights (`make models`).
pub fn real_model() -> PathBuf {
    let p = root().join("models/out/vgg16-max");
    assert!(p.join("manifest.json").is_file(), "run `make models` first (missing {})", p.display());
    p
}

pub fn example(name: &str) -> PathBuf {
    root().join("examples").join(name)
}

pub fn python() -> PathBuf {
    root().join(".venv/bin/python")
}

pub fn fuchun(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fuchun"))
        .args(args)
        .current_dir(root())
        .env("FUCHUN_LOG", "warn")
        .output()
        .expect("running the fuchun binary")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Write a float32 C-order .npy file.
pub fn write_npy(path: &Path, shape: &[usize], data: &[f32]) {
    assert_eq!(shape.iter().product::<usize>(), data.len());
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

/// Read a float64 or float32 C-order .npy file as f64 (shape, data).
pub fn read_npy(path: &Path) -> (Vec<usize>, Vec<f64>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
    assert!(header.contains("'fortran_order': False"), "{}: only C-order arrays are read: {header}", path.display());
    let shape_str = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let shape: Vec<usize> =
        shape_str.split(',').filter(|s| !s.trim().is_empty()).map(|s| s.trim().parse().unwrap()).collect();
    let body = &bytes[10 + hlen..];
    let data = if header.contains("'<f8'") {
        body.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect()
    } else if header.contains("'<f4'") {
        body.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect()
    } else {
        panic!("unsupported dtype in {header}")
    };
    (shape, data)
}

/// CRC-32 (PNG chunks).
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

/// The first bytes of a PNG whose header declares w×h RGB pixels (no image data follows).
pub fn png_header(w: u32, h: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    png
}

/// A synthetic camera clip from the bundled images (`fuchun::lab::clip`): Tübingen as the still scene, the astronaut
/// crossing it (a disc of `object` pixels), sensor noise, JPEG q85, a new scene at frame `frames / 2`.
pub fn example_clip(longest: usize, frames: usize, object: usize) -> fuchun::lab::clip::Clip {
    use fuchun::imageio::{fit_size, load_path, Limits};
    let bg = load_path(&example("tubingen.jpg"), &Limits::default()).unwrap();
    let obj = load_path(&example("astronaut.jpg"), &Limits::default()).unwrap();
    let (w, h) = fit_size(bg.width, bg.height, longest);
    let spec = fuchun::lab::clip::ClipSpec {
        frames,
        scene_change: Some(frames / 2),
        object_size: object,
        ..fuchun::lab::clip::ClipSpec::default()
    };
    fuchun::lab::clip::synthetic(&bg.resize(w, h), &obj, &spec)
}

/// A copy of a directory tree (a model directory with its refinement, `refine/`).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}
