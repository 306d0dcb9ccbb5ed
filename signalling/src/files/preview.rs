//! Previews: a JPEG at most [`PREVIEW_EDGE`] pixels on its long side,
//! made from JPEG, PNG, GIF or WebP images. Decoding is bounded (pixel
//! count and memory) and runs on the blocking pool.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, ImageReader, Limits};

/// Longest side of a preview, in pixels.
pub const PREVIEW_EDGE: u32 = 320;

/// Largest width or height of an image the server decodes.
const MAX_SIDE: u32 = 16_384;

/// Most memory one decode may take.
const MAX_ALLOC: u64 = 512 * 1024 * 1024;

/// Whether a file of this type can get a preview.
#[must_use]
pub fn can_preview(content_type: &str) -> bool {
    matches!(
        content_type.split(';').next().map(str::trim),
        Some("image/jpeg" | "image/png" | "image/gif" | "image/webp")
    )
}

/// The preview of `bytes`: JPEG bytes and their width and height; `None`
/// when the bytes are not an image the server reads (whatever the declared
/// type said) or exceed the limits.
#[must_use]
pub fn make(bytes: &[u8]) -> Option<(Vec<u8>, u32, u32)> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .ok()?;
    if !matches!(
        reader.format(),
        Some(ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::Gif | ImageFormat::WebP)
    ) {
        return None;
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    let image = reader.decode().ok()?;
    let small = if image.width().max(image.height()) > PREVIEW_EDGE {
        image.resize(
            PREVIEW_EDGE,
            PREVIEW_EDGE,
            image::imageops::FilterType::Triangle,
        )
    } else {
        image
    };
    let flat = DynamicImage::ImageRgb8(on_white(&small));
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80)
        .encode_image(&flat)
        .ok()?;
    Some((out, flat.width(), flat.height()))
}

/// Drops the alpha channel by laying the image on white (JPEG has none,
/// and transparent pixels would otherwise turn black).
fn on_white(image: &DynamicImage) -> image::RgbImage {
    let rgba = image.to_rgba8();
    image::RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let blend = |c: u8| {
            let c = u16::from(c);
            let a = u16::from(a);
            u8::try_from((c * a + 255 * (255 - a)) / 255).unwrap_or(u8::MAX)
        };
        image::Rgb([blend(r), blend(g), blend(b)])
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let image = image::RgbaImage::from_fn(width, height, |x, _| {
            image::Rgba([u8::try_from(x % 256).unwrap(), 0, 0, 128])
        });
        let mut out = Vec::new();
        DynamicImage::ImageRgba8(image)
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn a_large_image_shrinks_to_320_on_its_long_side() {
        let (jpeg, w, h) = make(&png(1600, 900)).unwrap();
        assert_eq!((w, h), (320, 180));
        let back = image::load_from_memory(&jpeg).unwrap();
        assert_eq!((back.width(), back.height()), (320, 180));
        assert_eq!(image::guess_format(&jpeg).unwrap(), ImageFormat::Jpeg);
    }

    #[test]
    fn a_small_image_keeps_its_size_and_loses_transparency_to_white() {
        let (jpeg, w, h) = make(&png(40, 30)).unwrap();
        assert_eq!((w, h), (40, 30));
        let back = image::load_from_memory(&jpeg).unwrap().to_rgb8();
        // Half-transparent black-ish red on white: light, not dark.
        assert!(back.get_pixel(0, 0).0[1] > 100);
    }

    #[test]
    fn what_is_not_an_image_gets_no_preview() {
        assert!(make(b"%PDF-1.7 not an image").is_none());
        assert!(make(&png(10, 10)[..20]).is_none());
        assert!(can_preview("image/png"));
        assert!(can_preview("image/jpeg; charset=binary"));
        assert!(!can_preview("image/svg+xml"));
        assert!(!can_preview("application/pdf"));
    }
}
