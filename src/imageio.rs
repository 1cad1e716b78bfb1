//! Image I/O: decoding with limits (bytes, dimensions, pixels, memory) checked before any large allocation,
//! EXIF orientation, resizing, and encoding. Images are planar RGB f32 in [0,1] (`[3, h, w]`), the layout the
//! graphs take.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, ImageReader, Rgb32FImage, RgbImage};

#[derive(Debug, Clone, PartialEq)]
pub struct Planar {
    pub width: usize,
    pub height: usize,
    /// R plane, then G, then B; `3 * width * height` values.
    pub data: Vec<f32>,
}

impl Planar {
    pub fn new(width: usize, height: usize) -> Planar {
        Planar { width, height, data: vec![0.0; 3 * width * height] }
    }

    pub fn from_rgb8(img: &RgbImage) -> Planar {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let mut p = Planar::new(w, h);
        let n = w * h;
        for (i, px) in img.pixels().enumerate() {
            for c in 0..3 {
                p.data[c * n + i] = px[c] as f32 / 255.0;
            }
        }
        p
    }

    pub fn to_rgb8(&self) -> RgbImage {
        let n = self.width * self.height;
        let mut img = RgbImage::new(self.width as u32, self.height as u32);
        for (i, px) in img.pixels_mut().enumerate() {
            for c in 0..3 {
                px[c] = (self.data[c * n + i].clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
        img
    }

    fn to_rgb32f(&self) -> Rgb32FImage {
        let n = self.width * self.height;
        let mut img = Rgb32FImage::new(self.width as u32, self.height as u32);
        for (i, px) in img.pixels_mut().enumerate() {
            for c in 0..3 {
                px[c] = self.data[c * n + i];
            }
        }
        img
    }

    fn from_rgb32f(img: &Rgb32FImage) -> Planar {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let mut p = Planar::new(w, h);
        let n = w * h;
        for (i, px) in img.pixels().enumerate() {
            for c in 0..3 {
                p.data[c * n + i] = px[c];
            }
        }
        p
    }

    /// Resampled copy (Catmull-Rom when shrinking or enlarging; identity when the size is unchanged).
    pub fn resize(&self, width: usize, height: usize) -> Planar {
        if width == self.width && height == self.height {
            return self.clone();
        }
        let out = image::imageops::resize(
            &self.to_rgb32f(),
            width.max(1) as u32,
            height.max(1) as u32,
            image::imageops::FilterType::CatmullRom,
        );
        Planar::from_rgb32f(&out)
    }

    /// Scaled so that the longest side is `longest`, aspect kept, each side ≥ 1.
    pub fn fit_longest(&self, longest: usize) -> Planar {
        let (w, h) = fit_size(self.width, self.height, longest);
        self.resize(w, h)
    }
}

/// The error for an image whose output would be under the model's minimum side, naming the side that is short.
pub fn too_small(width: usize, height: usize, out_w: usize, out_h: usize, min: usize) -> ImageError {
    let (side, input, output) = if out_w < out_h { ("width", width, out_w) } else { ("height", height, out_h) };
    let detail = if input < min {
        format!("too small: its {side} of {input} px is under the {min} px the model needs; send a larger image")
    } else {
        format!(
            "too small at the output size {out_w}x{out_h}: its {side} would be {output} px, under the {min} px the \
             model needs; use a larger output size (--image-size; in the daemon the style's image_size or the \
             camera's max_size) or an image with a less extreme aspect ratio"
        )
    };
    ImageError::TooSmall { width, height, detail }
}

/// (w, h) with the longest side `longest` and the aspect of `width`×`height`.
pub fn fit_size(width: usize, height: usize, longest: usize) -> (usize, usize) {
    if width >= height {
        (longest, ((height as f64 * longest as f64 / width as f64).round() as usize).max(1))
    } else {
        (((width as f64 * longest as f64 / height as f64).round() as usize).max(1), longest)
    }
}

/// What a decoder may accept. Everything is checked before the pixel buffer is allocated.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_width: u32,
    pub max_height: u32,
    pub max_pixels: u64,
    /// Memory the decoding may take, estimated from the header before decoding (`decode_memory`): the decoder's
    /// output (width × height × its bytes per pixel, e.g. 8 for 16-bit RGBA), the conversion to 8-bit RGB, the
    /// coefficients a progressive JPEG keeps, a WebP decoder's working planes.
    pub max_decode_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 64 << 20,
            max_width: 16384,
            max_height: 16384,
            max_pixels: 64_000_000,
            max_decode_bytes: 1 << 30,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: file not found: check the path")]
    NotFound { path: PathBuf },
    #[error("{path}: cannot read ({source}): check the file's permissions")]
    Unreadable { path: PathBuf, source: std::io::Error },
    #[error("{bytes} bytes is over the limit of {limit} bytes: send a smaller image (or raise the limit)")]
    TooManyBytes { bytes: u64, limit: u64 },
    #[error("the data is empty: expected a JPEG, PNG or WebP image")]
    Empty,
    #[error("not a supported image: expected JPEG, PNG or WebP")]
    UnknownFormat,
    #[error("the image is corrupt or truncated ({0}): re-encode or re-send it")]
    Decode(String),
    #[error("the image is {width}x{height} pixels, over the limit ({limit}): downscale it first")]
    TooLarge { width: u64, height: u64, limit: String },
    #[error(
        "decoding this {width}x{height} {kind} would take about {} MiB, over the limit of {} MiB ({setting}): send a \
         smaller image, an 8-bit one or a baseline JPEG, or raise the limit",
        bytes.div_ceil(1 << 20),
        limit >> 20
    )]
    DecodeMemory { width: u32, height: u32, kind: String, bytes: u64, limit: u64, setting: &'static str },
    #[error("the image is {width}x{height} pixels: {detail}")]
    TooSmall { width: usize, height: usize, detail: String },
    #[error("cannot encode the image: {0}")]
    Encode(String),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("unsupported output format {0:?}: use a .png, .jpg or .jpeg file name")]
    OutputFormat(String),
}

impl ImageError {
    /// A short machine-readable code (for MQTT error messages).
    pub fn code(&self) -> &'static str {
        match self {
            ImageError::NotFound { .. } => "not_found",
            ImageError::Unreadable { .. } => "unreadable",
            ImageError::TooManyBytes { .. } => "payload_too_large",
            ImageError::Empty => "empty_payload",
            ImageError::UnknownFormat => "not_an_image",
            ImageError::Decode(_) => "corrupt_image",
            ImageError::TooLarge { .. } | ImageError::DecodeMemory { .. } => "image_too_large",
            ImageError::TooSmall { .. } => "image_too_small",
            ImageError::Encode(_) => "encode_failed",
            ImageError::Write { .. } => "write_failed",
            ImageError::OutputFormat(_) => "bad_output_format",
        }
    }
}

/// Read and decode an image file.
pub fn load_path(path: &Path, limits: &Limits) -> Result<Planar, ImageError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ImageError::NotFound { path: path.to_path_buf() }
        } else {
            ImageError::Unreadable { path: path.to_path_buf(), source: e }
        }
    })?;
    if meta.len() > limits.max_bytes {
        return Err(ImageError::TooManyBytes { bytes: meta.len(), limit: limits.max_bytes });
    }
    let bytes = std::fs::read(path).map_err(|e| ImageError::Unreadable { path: path.to_path_buf(), source: e })?;
    decode(&bytes, limits)
}

/// The size limits (width, height, pixels) for a declared or decoded size.
fn within_limits(w: u32, h: u32, limits: &Limits) -> Result<(), ImageError> {
    if w > limits.max_width || h > limits.max_height || w as u64 * h as u64 > limits.max_pixels {
        return Err(too_large(w as u64, h as u64, limits));
    }
    Ok(())
}

/// A decoder's size: within the limits and not empty.
fn check_dimensions(w: u32, h: u32, limits: &Limits) -> Result<(), ImageError> {
    within_limits(w, h, limits)?;
    if w == 0 || h == 0 {
        return Err(ImageError::Decode(format!("the image declares {w}x{h} pixels")));
    }
    Ok(())
}

fn too_large(w: u64, h: u64, limits: &Limits) -> ImageError {
    ImageError::TooLarge {
        width: w,
        height: h,
        limit: format!("at most {}x{} and {} pixels", limits.max_width, limits.max_height, limits.max_pixels),
    }
}

/// Decode JPEG, PNG or WebP bytes: the size limits are checked on the header, before decoding; EXIF orientation
/// is applied; grey, alpha and 16-bit images become RGB (alpha is dropped).
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Planar, ImageError> {
    Ok(Planar::from_rgb8(&decode_rgb8(bytes, limits)?))
}

/// `decode` up to the 8-bit RGB image.
fn decode_rgb8(bytes: &[u8], limits: &Limits) -> Result<RgbImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    if bytes.len() as u64 > limits.max_bytes {
        return Err(ImageError::TooManyBytes { bytes: bytes.len() as u64, limit: limits.max_bytes });
    }
    let reader =
        ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| ImageError::Decode(e.to_string()))?;
    match reader.format() {
        Some(image::ImageFormat::Jpeg) => {
            if !jpeg_is_complete(bytes) {
                return Err(ImageError::Decode("JPEG data ends before its end-of-image marker".into()));
            }
        }
        Some(image::ImageFormat::Png | image::ImageFormat::WebP) => {}
        _ => return Err(ImageError::UnknownFormat),
    }
    if let Some((w, h)) = declared_dimensions(bytes) {
        within_limits(w, h, limits)?;
    }
    // a JPEG's cost is known from its frame header alone: checked before the decoder reads anything more
    let jpeg = jpeg_frame(bytes);
    if let Some(f) = &jpeg {
        let coefficients = if f.progressive { f.coefficient_bytes() } else { 0 };
        within_memory(f.width, f.height, &f.kind(), coefficients + 3 * f.pixels(), limits)?;
    }
    let mut decoder = reader.into_decoder().map_err(|e| map_decode_error(e, limits))?;
    let (w, h) = decoder.dimensions();
    check_dimensions(w, h, limits)?;
    if jpeg.is_none() {
        let (kind, bytes) = decode_memory(bytes, w, h, decoder.color_type());
        within_memory(w, h, &kind, bytes, limits)?;
    }
    let mut il = image::Limits::default();
    il.max_image_width = Some(limits.max_width);
    il.max_image_height = Some(limits.max_height);
    il.max_alloc = Some(limits.max_decode_bytes);
    decoder.set_limits(il).map_err(|e| map_decode_error(e, limits))?;
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| map_decode_error(e, limits))?;
    img.apply_orientation(orientation);
    Ok(match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    })
}

/// A decoded image reduced for its use, and the size it has as sent (after EXIF orientation).
pub struct Fitted {
    pub image: Planar,
    pub width: usize,
    pub height: usize,
}

/// Decode for an output whose longest side is at most `longest`: the result is no larger than needed (never
/// upscaled). A JPEG is reduced in the DCT domain while it is decoded (1/2, 1/4 or 1/8: the smallest scale that
/// still covers `longest`), so a 40-megapixel frame never exists at full size in memory; other formats are decoded
/// as 8-bit and reduced before the conversion to floats.
pub fn decode_fitted(bytes: &[u8], limits: &Limits, longest: usize) -> Result<Fitted, ImageError> {
    if bytes.starts_with(&[0xFF, 0xD8]) && jpeg_is_complete(bytes) && bytes.len() as u64 <= limits.max_bytes {
        if let Some(f) = decode_jpeg_scaled(bytes, limits, longest)? {
            return Ok(f);
        }
    }
    let img = decode_rgb8(bytes, limits)?;
    let (width, height) = (img.width() as usize, img.height() as usize);
    Ok(Fitted { image: Planar::from_rgb8(&shrink_rgb8(img, longest)), width, height })
}

/// Reduce an 8-bit image so that its longest side is at most `longest` (Catmull-Rom; unchanged when it fits).
fn shrink_rgb8(img: RgbImage, longest: usize) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w.max(h) <= longest {
        return img;
    }
    let (tw, th) = fit_size(w, h, longest);
    image::imageops::resize(&img, tw as u32, th as u32, image::imageops::FilterType::CatmullRom)
}

/// The DCT-scaled JPEG path of `decode_fitted`; None when this decoder cannot read the file (the general path
/// then decides, with its own errors).
fn decode_jpeg_scaled(bytes: &[u8], limits: &Limits, longest: usize) -> Result<Option<Fitted>, ImageError> {
    let mut d = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    if d.read_info().is_err() {
        return Ok(None);
    }
    let Some(info) = d.info() else { return Ok(None) };
    let (w, h) = (info.width as u32, info.height as u32);
    check_dimensions(w, h, limits)?;
    let (tw, th) = fit_size(w as usize, h as usize, longest.min(w.max(h) as usize));
    let Ok((sw, sh)) = d.scale(tw.max(1) as u16, th.max(1) as u16) else { return Ok(None) };
    // a baseline JPEG is decoded a row of blocks at a time into the scaled output; a progressive one keeps every
    // coefficient of the full-size image until its last scan
    if let Some(f) = jpeg_frame(bytes) {
        let output = 4 * sw as u64 * sh as u64;
        let coefficients = if f.progressive { f.coefficient_bytes() } else { 0 };
        within_memory(w, h, &f.kind(), coefficients + output, limits)?;
    }
    let Ok(pixels) = d.decode() else { return Ok(None) };
    let Some(info) = d.info() else { return Ok(None) };
    let (sw, sh) = (info.width as u32, info.height as u32);
    let n = (sw * sh) as usize;
    let rgb: Vec<u8> = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 if pixels.len() == 3 * n => pixels,
        jpeg_decoder::PixelFormat::L8 if pixels.len() == n => pixels.iter().flat_map(|&g| [g, g, g]).collect(),
        jpeg_decoder::PixelFormat::L16 if pixels.len() == 2 * n => {
            pixels.chunks_exact(2).flat_map(|c| [c[0], c[0], c[0]]).collect()
        }
        // Adobe CMYK as the decoder returns it (already inverted): RGB = (255 - K) scaled by (255 - C/M/Y)
        jpeg_decoder::PixelFormat::CMYK32 if pixels.len() == 4 * n => pixels
            .chunks_exact(4)
            .flat_map(|c| {
                let k = 255 - c[3] as u32;
                [0, 1, 2].map(|i| ((255 - c[i] as u32) * k / 255) as u8)
            })
            .collect(),
        _ => return Ok(None),
    };
    let Some(img) = RgbImage::from_raw(sw, sh, rgb) else { return Ok(None) };
    let orientation = d
        .exif_data()
        .and_then(image::metadata::Orientation::from_exif_chunk)
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::ImageRgb8(shrink_rgb8(img, longest));
    img.apply_orientation(orientation);
    let (width, height) = match orientation {
        image::metadata::Orientation::Rotate90
        | image::metadata::Orientation::Rotate270
        | image::metadata::Orientation::Rotate90FlipH
        | image::metadata::Orientation::Rotate270FlipH => (h as usize, w as usize),
        _ => (w as usize, h as usize),
    };
    Ok(Some(Fitted { image: Planar::from_rgb8(&img.to_rgb8()), width, height }))
}

/// Width and height as the PNG (IHDR) or JPEG (SOFn) header declares them, read without decoding, so that a
/// huge declared size is refused even when the rest of the file is missing. None for other formats (WebP: the
/// decoder's own header check applies).
fn declared_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    if bytes.len() >= 24 && bytes.starts_with(b"\x89PNG\r\n\x1a\n") && &bytes[12..16] == b"IHDR" {
        return Some((be32(&bytes[16..20]), be32(&bytes[20..24])));
    }
    let (i, _) = jpeg_sof(bytes)?;
    let h = u16::from_be_bytes([bytes[i + 5], bytes[i + 6]]) as u32;
    let w = u16::from_be_bytes([bytes[i + 7], bytes[i + 8]]) as u32;
    Some((w, h))
}

/// The frame header (SOFn) of a JPEG: its offset and marker, found by walking the segments without decoding (None
/// for other formats, or if there is none before the data ends). The 10 bytes from the offset are in `bytes`.
fn jpeg_sof(bytes: &[u8]) -> Option<(usize, u8)> {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let mut i = 2;
    while i + 9 < bytes.len() {
        if bytes[i] != 0xFF {
            return None;
        }
        let marker = bytes[i + 1];
        if marker == 0xFF {
            i += 1;
            continue;
        }
        // SOF0–SOF15 except DHT (C4), JPG (C8) and DAC (CC)
        if (0xC0..=0xCF).contains(&marker) && ![0xC4, 0xC8, 0xCC].contains(&marker) {
            return Some((i, marker));
        }
        i += 2 + u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]) as usize;
    }
    None
}

/// What a JPEG's frame header (SOFn) says about the memory its decoding takes.
#[derive(Debug)]
struct JpegFrame {
    width: u32,
    height: u32,
    progressive: bool,
    /// Sampling factors (horizontal, vertical) of each component.
    sampling: Vec<(u32, u32)>,
}

impl JpegFrame {
    fn pixels(&self) -> u64 {
        self.width as u64 * self.height as u64
    }

    /// The DCT coefficients of the whole image (64 × 2 bytes a block, every block of every component, whole MCUs),
    /// which a progressive decoder keeps until its last scan.
    fn coefficient_bytes(&self) -> u64 {
        let hmax = self.sampling.iter().map(|s| s.0).max().unwrap_or(1).max(1) as u64;
        let vmax = self.sampling.iter().map(|s| s.1).max().unwrap_or(1).max(1) as u64;
        let mcus_x = (self.width as u64).div_ceil(8 * hmax);
        let mcus_y = (self.height as u64).div_ceil(8 * vmax);
        let blocks: u64 = self.sampling.iter().map(|&(h, v)| mcus_x * h as u64 * mcus_y * v as u64).sum();
        blocks * 64 * 2
    }

    fn kind(&self) -> String {
        format!("{} JPEG", if self.progressive { "progressive" } else { "baseline" })
    }
}

/// The frame header of a JPEG, read without decoding (None if there is none before the data ends).
fn jpeg_frame(bytes: &[u8]) -> Option<JpegFrame> {
    let (i, marker) = jpeg_sof(bytes)?;
    let height = u16::from_be_bytes([bytes[i + 5], bytes[i + 6]]) as u32;
    let width = u16::from_be_bytes([bytes[i + 7], bytes[i + 8]]) as u32;
    let n = bytes[i + 9] as usize;
    let comps = bytes.get(i + 10..i + 10 + 3 * n)?;
    let sampling = comps.chunks_exact(3).map(|c| ((c[1] >> 4) as u32, (c[1] & 15) as u32)).collect();
    // SOF2, SOF6, SOF10, SOF14: progressive
    let progressive = [0xC2, 0xC6, 0xCA, 0xCE].contains(&marker);
    Some(JpegFrame { width, height, progressive, sampling })
}

/// The memory decoding a PNG or WebP of `w`×`h` takes, from the decoder's output colour type: its buffer, the
/// 8-bit RGB copy made of anything else, and a WebP decoder's own planes (lossy: YUV 4:2:0, 1.5 bytes a pixel;
/// lossless and extended files: an ARGB plane, 4). Also a name for the error message.
fn decode_memory(bytes: &[u8], w: u32, h: u32, color: image::ColorType) -> (String, u64) {
    let px = w as u64 * h as u64;
    let mut total = px * color.bytes_per_pixel() as u64;
    if color != image::ColorType::Rgb8 {
        total += 3 * px;
    }
    let depth = 8 * color.bytes_per_pixel() as u32 / color.channel_count() as u32;
    let channels = match color.channel_count() {
        1 => "grey",
        2 => "grey+alpha",
        3 => "RGB",
        _ => "RGBA",
    };
    let format = if bytes.starts_with(b"RIFF") {
        total += if bytes.get(12..16) == Some(b"VP8 ") { px * 3 / 2 } else { px * 4 };
        "WebP"
    } else {
        "PNG"
    };
    (format!("{depth}-bit {channels} {format}"), total)
}

/// `bytes` (the estimated memory of decoding a `w`×`h` image) within `limits.max_decode_bytes`.
fn within_memory(w: u32, h: u32, kind: &str, bytes: u64, limits: &Limits) -> Result<(), ImageError> {
    if bytes > limits.max_decode_bytes {
        return Err(ImageError::DecodeMemory {
            width: w,
            height: h,
            kind: kind.to_string(),
            bytes,
            limit: limits.max_decode_bytes,
            setting: "daemon.max_decode_bytes in the daemon",
        });
    }
    Ok(())
}

/// Whether a JPEG's last scan is followed by its end-of-image marker. The decoder pads a truncated scan with grey
/// rather than failing, so a cut-off upload would otherwise be accepted. Inside entropy-coded data 0xFF is always
/// stuffed (FF 00) or a restart marker, so FF D9 after the last start-of-scan (FF DA) can only be the real EOI.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_sos {
        Some(i) => bytes[i..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false,
    }
}

fn map_decode_error(e: image::ImageError, limits: &Limits) -> ImageError {
    match e {
        image::ImageError::Limits(l) => ImageError::TooLarge { width: 0, height: 0, limit: format!("{l}; {limits:?}") },
        image::ImageError::Unsupported(u) => ImageError::Decode(u.to_string()),
        other => ImageError::Decode(other.to_string()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OutputFormat {
    Png,
    Jpeg { quality: u8 },
}

impl OutputFormat {
    pub fn from_path(path: &Path) -> Result<OutputFormat, ImageError> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        match ext.as_str() {
            "png" => Ok(OutputFormat::Png),
            "jpg" | "jpeg" => Ok(OutputFormat::Jpeg { quality: 92 }),
            _ => Err(ImageError::OutputFormat(path.display().to_string())),
        }
    }
}

pub fn encode(img: &Planar, format: OutputFormat) -> Result<Vec<u8>, ImageError> {
    let rgb = img.to_rgb8();
    let mut out = Vec::new();
    match format {
        OutputFormat::Png => rgb
            .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .map_err(|e| ImageError::Encode(e.to_string()))?,
        OutputFormat::Jpeg { quality } => {
            let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
            rgb.write_with_encoder(enc).map_err(|e| ImageError::Encode(e.to_string()))?
        }
    }
    Ok(out)
}

/// Encode by the file's extension and write atomically (temporary file in the same directory, then rename).
pub fn save_path(img: &Planar, path: &Path) -> Result<(), ImageError> {
    let bytes = encode(img, OutputFormat::from_path(path)?)?;
    let write_err = |e| ImageError::Write { path: path.to_path_buf(), source: e };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(write_err)?;
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("image");
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    std::fs::write(&tmp, &bytes).map_err(write_err)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        write_err(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: usize, h: usize) -> Planar {
        let mut p = Planar::new(w, h);
        let n = w * h;
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                p.data[i] = x as f32 / w as f32;
                p.data[n + i] = y as f32 / h as f32;
                p.data[2 * n + i] = ((x + y) % 7) as f32 / 7.0;
            }
        }
        Planar::from_rgb8(&p.to_rgb8())
    }

    pub(crate) fn crc32(data: &[u8]) -> u32 {
        let mut c = 0xffff_ffffu32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }

    fn chunk(kind: &[u8], data: &[u8]) -> Vec<u8> {
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
        out
    }

    #[test]
    fn png_round_trip_is_exact_and_jpeg_is_close() {
        let img = gradient(37, 23);
        let back = decode(&encode(&img, OutputFormat::Png).unwrap(), &Limits::default()).unwrap();
        assert!(back == img, "PNG round trip changed the pixels");
        let j = decode(&encode(&img, OutputFormat::Jpeg { quality: 95 }).unwrap(), &Limits::default()).unwrap();
        let err: f32 = j.data.iter().zip(&img.data).map(|(a, b)| (a - b).abs()).sum::<f32>() / img.data.len() as f32;
        assert!(err < 0.03, "{err}");
    }

    /// A JPEG with an EXIF APP1 segment saying "rotate 90° clockwise" (orientation 6).
    fn jpeg_with_orientation(img: &Planar, orientation: u16) -> Vec<u8> {
        let jpeg = encode(img, OutputFormat::Jpeg { quality: 95 }).unwrap();
        let mut tiff = b"MM\x00\x2a\x00\x00\x00\x08".to_vec();
        tiff.extend_from_slice(&1u16.to_be_bytes()); // one IFD entry
        tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
        tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
        tiff.extend_from_slice(&1u32.to_be_bytes()); // count
        tiff.extend_from_slice(&orientation.to_be_bytes());
        tiff.extend_from_slice(&[0, 0]);
        tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
        let mut app1 = b"Exif\x00\x00".to_vec();
        app1.extend_from_slice(&tiff);
        let mut out = jpeg[..2].to_vec(); // SOI
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&app1);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    #[test]
    fn fitted_decode_is_small_and_matches_the_full_decode() {
        let img = gradient(1600, 900);
        let jpeg = encode(&img, OutputFormat::Jpeg { quality: 95 }).unwrap();
        let png = encode(&img, OutputFormat::Png).unwrap();
        for (what, bytes) in [("jpeg", &jpeg), ("png", &png)] {
            let f = decode_fitted(bytes, &Limits::default(), 256).unwrap();
            assert_eq!((f.width, f.height, f.image.width, f.image.height), (1600, 900, 256, 144), "{what}");
            let reference = decode(bytes, &Limits::default()).unwrap().resize(256, 144);
            let mad = f.image.data.iter().zip(&reference.data).map(|(a, b)| (a - b).abs()).sum::<f32>()
                / reference.data.len() as f32;
            assert!(mad < 0.01, "{what}: mean difference {mad} from the full decode");
        }
        // never upscaled; orientation applied and the sent size reported as oriented
        let f = decode_fitted(&jpeg, &Limits::default(), 4000).unwrap();
        assert_eq!((f.image.width, f.image.height), (1600, 900));
        let rotated = jpeg_with_orientation(&gradient(64, 32), 6);
        let f = decode_fitted(&rotated, &Limits::default(), 16).unwrap();
        assert_eq!((f.width, f.height, f.image.width, f.image.height), (32, 64, 8, 16));
        let full = decode(&rotated, &Limits::default()).unwrap().resize(8, 16);
        let mad = f.image.data.iter().zip(&full.data).map(|(a, b)| (a - b).abs()).sum::<f32>() / 384.0;
        assert!(mad < 0.05, "rotated: {mad}");
        // the limits still apply
        let limits = Limits { max_pixels: 1000, ..Limits::default() };
        assert!(matches!(decode_fitted(&jpeg, &limits, 64), Err(ImageError::TooLarge { .. })));
    }

    #[test]
    fn too_small_names_the_short_side() {
        let e = too_small(12000, 30, 256, 1, 24).to_string();
        assert!(e.contains("12000x30") && e.contains("its height would be 1 px") && e.contains("aspect"), "{e}");
        let e = too_small(20, 100, 20, 100, 24).to_string();
        assert!(e.contains("its width of 20 px is under the 24 px") && e.contains("too small"), "{e}");
    }

    #[test]
    fn exif_orientation_is_honoured() {
        let mut img = Planar::new(40, 20);
        // a bright red block in the top-left corner
        for y in 0..6 {
            for x in 0..6 {
                img.data[y * 40 + x] = 1.0;
            }
        }
        let bytes = jpeg_with_orientation(&img, 6);
        let got = decode(&bytes, &Limits::default()).unwrap();
        assert_eq!((got.width, got.height), (20, 40));
        // rotated 90° clockwise: the top-left corner moves to the top-right
        let n = got.width * got.height;
        let red = |x: usize, y: usize| got.data[y * got.width + x] - got.data[n + y * got.width + x];
        assert!(red(17, 2) > 0.6, "{}", red(17, 2));
        assert!(red(2, 2) < 0.2);
    }

    /// Every EXIF orientation (1–8), through the full decode and the DCT-scaled one: a red block in the stored
    /// image's top-left corner lands where the orientation says.
    #[test]
    fn every_exif_orientation_is_honoured() {
        let mut img = Planar::new(40, 20);
        for y in 0..6 {
            for x in 0..6 {
                img.data[y * 40 + x] = 1.0;
            }
        }
        // (orientation, displayed width, height, where the corner goes: 0 top-left, 1 top-right, 2 bottom-right,
        // 3 bottom-left)
        let cases = [(1, 40, 20, 0), (2, 40, 20, 1), (3, 40, 20, 2), (4, 40, 20, 3), (5, 20, 40, 0), (6, 20, 40, 1)];
        let cases = cases.into_iter().chain([(7, 20, 40, 2), (8, 20, 40, 3)]);
        for (o, w, h, corner) in cases {
            let bytes = jpeg_with_orientation(&img, o);
            let full = decode(&bytes, &Limits::default()).unwrap();
            let fitted = decode_fitted(&bytes, &Limits::default(), 40).unwrap();
            for (what, got) in [("decode", &full), ("decode_fitted", &fitted.image)] {
                assert_eq!((got.width, got.height), (w, h), "orientation {o} ({what})");
                let n = got.width * got.height;
                let red = |x: usize, y: usize| got.data[y * got.width + x] - got.data[n + y * got.width + x];
                let spots = [(2, 2), (w - 3, 2), (w - 3, h - 3), (2, h - 3)];
                for (k, (x, y)) in spots.into_iter().enumerate() {
                    let r = red(x, y);
                    if k == corner {
                        assert!(r > 0.6, "orientation {o} ({what}): no red at corner {k} ({r})");
                    } else {
                        assert!(r < 0.2, "orientation {o} ({what}): red at corner {k} ({r})");
                    }
                }
            }
            assert_eq!((fitted.width, fitted.height), (w, h));
        }
    }

    #[test]
    fn hostile_inputs_give_the_right_errors() {
        let l = Limits::default();
        assert!(matches!(decode(b"", &l), Err(ImageError::Empty)));
        assert!(matches!(decode(b"hello, this is not an image", &l), Err(ImageError::UnknownFormat)));
        let jpeg = encode(&gradient(64, 64), OutputFormat::Jpeg { quality: 90 }).unwrap();
        let e = decode(&jpeg[..jpeg.len() / 2], &l).unwrap_err();
        assert!(matches!(e, ImageError::Decode(_)), "{e}");
        let mut png = encode(&gradient(64, 64), OutputFormat::Png).unwrap();
        // IHDR's CRC no longer matches its data (bytes 29..33 of the file)
        png[29] ^= 0xff;
        let e = decode(&png, &l).unwrap_err();
        assert!(matches!(e, ImageError::Decode(_)), "{e}");
        // header declaring 100000 x 100000
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        let mut huge = b"\x89PNG\r\n\x1a\n".to_vec();
        huge.extend(chunk(b"IHDR", &ihdr));
        let e = decode(&huge, &l).unwrap_err();
        assert!(matches!(e, ImageError::TooLarge { width: 100_000, .. }), "{e}");
        assert!(e.to_string().contains("100000x100000"));
        // over the byte limit
        let small = Limits { max_bytes: 100, ..l };
        assert!(matches!(decode(&jpeg, &small), Err(ImageError::TooManyBytes { .. })));
    }

    #[test]
    fn decompression_bomb_is_rejected_before_decoding() {
        // a real, valid 12000x6000 PNG of zeros: ~200 KB compressed, 216 MB decoded
        let (w, h) = (12000u32, 6000u32);
        let img = RgbImage::new(w, h);
        let mut png = Vec::new();
        img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        assert!(png.len() < 2 << 20, "{}", png.len());
        let limits = Limits { max_pixels: 16_000_000, ..Limits::default() };
        let e = decode(&png, &limits).unwrap_err();
        assert!(matches!(e, ImageError::TooLarge { .. }), "{e}");
    }

    /// The decoding memory is estimated from the header and refused over `max_decode_bytes` before anything is
    /// decoded, for each format: 16-bit PNG (8 bytes a pixel), WebP (with its decoder's planes), progressive JPEG
    /// (every coefficient kept); a baseline JPEG decoded scaled stays small.
    #[test]
    fn decode_memory_is_bounded_before_decoding() {
        let (w, h) = (200u32, 100u32);
        let px = (w * h) as u64;
        let rgba16 = image::ImageBuffer::<image::Rgba<u16>, _>::from_fn(w, h, |x, y| {
            image::Rgba([(x * 300) as u16, (y * 600) as u16, 1000, 65535])
        });
        let mut png16 = Vec::new();
        rgba16.write_to(&mut Cursor::new(&mut png16), image::ImageFormat::Png).unwrap();
        let png8 = encode(&gradient(w as usize, h as usize), OutputFormat::Png).unwrap();
        let rgba8 = image::RgbaImage::from_fn(w, h, |x, y| image::Rgba([x as u8, y as u8, 7, 200]));
        let mut webp = Vec::new();
        image::codecs::webp::WebPEncoder::new_lossless(&mut webp)
            .encode(rgba8.as_raw(), w, h, image::ExtendedColorType::Rgba8)
            .unwrap();
        let limit = Limits { max_decode_bytes: 200_000, ..Limits::default() };
        for (what, bytes, need) in [("16-bit RGBA PNG", &png16, 11 * px), ("8-bit RGBA WebP", &webp, 11 * px)] {
            for r in [decode(bytes, &limit).map(|_| ()), decode_fitted(bytes, &limit, 32).map(|_| ())] {
                let e = r.unwrap_err();
                assert!(
                    matches!(&e, ImageError::DecodeMemory { bytes, limit: 200_000, .. } if *bytes == need),
                    "{what}: {e:?}"
                );
                assert_eq!(e.code(), "image_too_large");
                let m = e.to_string();
                assert!(m.contains(what) && m.contains("200x100") && m.contains("max_decode_bytes"), "{m}");
            }
            // within a limit that allows it: decoded
            let enough = Limits { max_decode_bytes: need, ..Limits::default() };
            assert_eq!(decode(bytes, &enough).unwrap().width, 200, "{what}");
        }
        assert_eq!(decode(&png8, &limit).unwrap().width, 200, "8-bit RGB PNG: 3 bytes a pixel");
        // progressive JPEG: the same frame with its SOF0 marked SOF2 (the cost is judged on the header alone)
        let side = 256;
        let baseline = encode(&gradient(side, side), OutputFormat::Jpeg { quality: 90 }).unwrap();
        let sof = baseline.windows(2).position(|m| m == [0xFF, 0xC0]).unwrap();
        let mut progressive = baseline.clone();
        progressive[sof + 1] = 0xC2;
        let f = jpeg_frame(&progressive).unwrap();
        assert!(f.progressive && (f.width, f.height) == (256, 256));
        let coefficients = f.coefficient_bytes();
        assert!(coefficients >= 256 * 256 * 2 * 3 / 2, "{coefficients}: at least 4:2:0");
        let limit = Limits { max_decode_bytes: coefficients, ..Limits::default() };
        for r in [decode_fitted(&progressive, &limit, 64).map(|_| ()), decode(&progressive, &limit).map(|_| ())] {
            let e = r.unwrap_err();
            assert!(matches!(e, ImageError::DecodeMemory { .. }), "{e:?}");
            assert!(e.to_string().contains("progressive JPEG"), "{e}");
        }
        // the baseline one, decoded scaled, needs a fraction of that
        let small = Limits { max_decode_bytes: 64 * 64 * 4, ..Limits::default() };
        assert_eq!(decode_fitted(&baseline, &small, 64).unwrap().image.width, 64);
    }

    #[test]
    fn sizes_and_paths() {
        assert_eq!(fit_size(400, 300, 128), (128, 96));
        assert_eq!(fit_size(300, 400, 128), (96, 128));
        assert_eq!(fit_size(1000, 1, 10), (10, 1));
        let g = gradient(40, 30).fit_longest(20);
        assert_eq!((g.width, g.height), (20, 15));
        assert!(matches!(OutputFormat::from_path(Path::new("a.gif")), Err(ImageError::OutputFormat(_))));
        let dir = std::env::temp_dir().join(format!("fuchun-io-{}", std::process::id()));
        let p = dir.join("sub/out.png");
        save_path(&g, &p).unwrap();
        let quantised = Planar::from_rgb8(&g.to_rgb8());
        assert!(load_path(&p, &Limits::default()).unwrap() == quantised, "PNG round trip changed the pixels");
        assert!(matches!(load_path(&dir.join("nope.png"), &Limits::default()), Err(ImageError::NotFound { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
