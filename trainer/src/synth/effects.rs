//! Batch effects: what an environment (series, plate, section, well) does
//! to the image on its way from the specimen to the camera.
//!
//! Each level of the hierarchy draws an [`Effects`] in a common
//! additive form (log gains, added blur variance, ...); a well's effect is
//! the sum over its series, plate, section and own level, realized into
//! [`Optics`] that [`Optics::apply`] runs on the clean planes. Besides the
//! first-order effects (gain, offset, gamma, background, vignetting,
//! noise) there are effects that per-channel mean/std alignment cannot
//! undo: blur and sharpening change texture, the pixel scale changes the
//! spatial frequency of everything, bleed-through mixes channels and the
//! density changes how many cells a field holds and how far they spread.

use std::ops::Add;

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::CHANNELS;
use crate::random::standard_normal;

/// One level's contribution, additive so levels compose by summation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Effects {
    /// Natural log of the per-channel gain.
    pub log_gain: [f32; CHANNELS],
    /// Natural log of the per-channel gamma.
    pub log_gamma: [f32; CHANNELS],
    /// Autofluorescence background per channel, in clean-signal units.
    pub background: [f32; CHANNELS],
    /// Fractional intensity drop at the field corner.
    pub vignetting: f32,
    /// Shift of the illumination centre, in fractions of the field.
    pub vignetting_shift: [f32; 2],
    /// Added Gaussian blur variance (pixels^2): defocus.
    pub blur_var: f32,
    /// Unsharp-mask amount (negative softens): texture and sharpness.
    pub sharpness: f32,
    /// Natural log of the pixel scale: magnification, spatial frequency.
    pub log_scale: f32,
    /// Natural log of the seeding density factor.
    pub log_density: f32,
    /// `bleed[from][to]`: fraction of channel `from` seen in channel `to`.
    pub bleed: [[f32; CHANNELS]; CHANNELS],
    /// Natural log of the camera's read-noise factor.
    pub log_noise: f32,
}

/// How strongly one level of the hierarchy varies each kind of effect
/// (standard deviations of the draws; 0 switches a kind off).
#[derive(Clone, Copy, Debug)]
pub struct Strength {
    /// Gain, gamma, background (first-order intensity effects).
    pub intensity: f32,
    /// Vignetting and its centre.
    pub illumination: f32,
    /// Blur and sharpness.
    pub focus: f32,
    /// Pixel scale.
    pub scale: f32,
    /// Seeding density.
    pub density: f32,
    /// Channel bleed-through.
    pub bleed: f32,
    /// Camera noise.
    pub noise: f32,
}

impl Strength {
    /// Series: a full replicate on another day, often another instrument
    /// setup; every kind of effect, strongest.
    pub const SERIES: Strength = Strength {
        intensity: 0.30,
        illumination: 0.25,
        focus: 0.55,
        scale: 0.07,
        density: 0.30,
        bleed: 0.06,
        noise: 0.35,
    };
    /// Plate: staining batch, seeding, a plate's focus offset.
    pub const PLATE: Strength = Strength {
        intensity: 0.20,
        illumination: 0.10,
        focus: 0.40,
        scale: 0.02,
        density: 0.25,
        bleed: 0.03,
        noise: 0.15,
    };
    /// Plate section: gradients across the plate (temperature, timing).
    pub const SECTION: Strength = Strength {
        intensity: 0.07,
        illumination: 0.0,
        focus: 0.15,
        scale: 0.0,
        density: 0.10,
        bleed: 0.0,
        noise: 0.0,
    };
    /// Well: pipetting and local focus.
    pub const WELL: Strength = Strength {
        intensity: 0.04,
        illumination: 0.0,
        focus: 0.08,
        scale: 0.0,
        density: 0.10,
        bleed: 0.0,
        noise: 0.0,
    };
}

/// Pairs of channels that bleed into each other (dna -> actin, mito <-> lyso):
/// neighbouring emission spectra.
const BLEED_PAIRS: [(usize, usize); 3] = [(0, 1), (2, 3), (3, 2)];

impl Effects {
    /// Draw one level's effects.
    pub fn draw(rng: &mut impl Rng, s: Strength) -> Effects {
        let mut n = |sd: f32| -> f32 { sd * standard_normal(rng) };
        let mut e = Effects::default();
        for c in 0..CHANNELS {
            e.log_gain[c] = n(s.intensity);
            e.log_gamma[c] = n(s.intensity * 0.5);
            e.background[c] = n(s.intensity * 120.0).abs();
        }
        e.vignetting = n(s.illumination).abs();
        e.vignetting_shift = [n(s.illumination * 0.5), n(s.illumination * 0.5)];
        e.blur_var = n(s.focus).powi(2) * 2.0;
        e.sharpness = n(s.focus);
        e.log_scale = n(s.scale);
        e.log_density = n(s.density);
        for (from, to) in BLEED_PAIRS {
            e.bleed[from][to] = n(s.bleed).abs();
        }
        e.log_noise = n(s.noise);
        e
    }

    /// The physical parameters of these (summed) effects.
    pub fn realize(&self) -> Optics {
        let mut gain = [0.0; CHANNELS];
        let mut gamma = [0.0; CHANNELS];
        for c in 0..CHANNELS {
            gain[c] = self.log_gain[c].exp();
            gamma[c] = self.log_gamma[c].exp();
        }
        Optics {
            gain,
            gamma,
            background: self.background.map(|b| BASE_BACKGROUND + b),
            vignetting: (BASE_VIGNETTING + self.vignetting).min(0.8),
            vignetting_center: [
                0.5 + self.vignetting_shift[0].clamp(-0.4, 0.4),
                0.5 + self.vignetting_shift[1].clamp(-0.4, 0.4),
            ],
            blur_sigma: (BASE_BLUR_VAR + self.blur_var).sqrt(),
            sharpness: self.sharpness.clamp(-0.8, 2.0),
            scale: self.log_scale.exp(),
            density: self.log_density.exp(),
            bleed: self.bleed,
            read_noise: BASE_READ_NOISE * self.log_noise.exp(),
        }
    }
}

impl Add for &Effects {
    type Output = Effects;

    fn add(self, o: &Effects) -> Effects {
        let mut e = self.clone();
        for c in 0..CHANNELS {
            e.log_gain[c] += o.log_gain[c];
            e.log_gamma[c] += o.log_gamma[c];
            e.background[c] += o.background[c];
            for t in 0..CHANNELS {
                e.bleed[c][t] += o.bleed[c][t];
            }
        }
        e.vignetting += o.vignetting;
        e.vignetting_shift[0] += o.vignetting_shift[0];
        e.vignetting_shift[1] += o.vignetting_shift[1];
        e.blur_var += o.blur_var;
        e.sharpness += o.sharpness;
        e.log_scale += o.log_scale;
        e.log_density += o.log_density;
        e.log_noise += o.log_noise;
        e
    }
}

/// Background every field has (clean-signal units).
const BASE_BACKGROUND: f32 = 60.0;
/// Vignetting of a well-aligned microscope.
const BASE_VIGNETTING: f32 = 0.05;
/// Blur variance of an in-focus image (the optics' point spread).
const BASE_BLUR_VAR: f32 = 0.25;
/// Camera read noise, counts.
const BASE_READ_NOISE: f32 = 6.0;
/// Camera offset (counts added to every pixel, as sCMOS cameras do).
const CAMERA_OFFSET: f32 = 100.0;
/// Reference intensity for gamma: gamma bends the curve around it.
const GAMMA_REFERENCE: f32 = 1000.0;
/// Counts per photoelectron: shot-noise variance is this times the signal.
const COUNTS_PER_ELECTRON: f32 = 0.6;

/// The realized image-formation parameters of one well.
#[derive(Clone, Debug, PartialEq)]
pub struct Optics {
    /// Per-channel gain.
    pub gain: [f32; CHANNELS],
    /// Per-channel gamma.
    pub gamma: [f32; CHANNELS],
    /// Per-channel background.
    pub background: [f32; CHANNELS],
    /// Fractional drop at the far corner.
    pub vignetting: f32,
    /// Illumination centre (fractions of height, width).
    pub vignetting_center: [f32; 2],
    /// Gaussian blur sigma, pixels.
    pub blur_sigma: f32,
    /// Unsharp-mask amount.
    pub sharpness: f32,
    /// Pixel scale (lengths in the specimen are multiplied by it).
    pub scale: f32,
    /// Seeding density factor.
    pub density: f32,
    /// Bleed-through fractions.
    pub bleed: [[f32; CHANNELS]; CHANNELS],
    /// Read noise, counts.
    pub read_noise: f32,
}

impl Optics {
    /// Turn clean planes (`CHANNELS` planes of `side`^2) into 16-bit camera images.
    pub fn apply(&self, clean: &[Vec<f32>], side: usize, rng: &mut impl Rng) -> Vec<Vec<u16>> {
        let mut planes: Vec<Vec<f32>> = (0..CHANNELS)
            .map(|to| {
                let mut p = clean[to].clone();
                for (from, plane) in clean.iter().enumerate() {
                    let f = self.bleed[from][to];
                    if from != to && f > 0.0 {
                        p.iter_mut().zip(plane).for_each(|(a, b)| *a += f * b);
                    }
                }
                p
            })
            .collect();
        let vignette = self.vignette_map(side);
        for (c, plane) in planes.iter_mut().enumerate() {
            *plane = gaussian_blur(plane, side, self.blur_sigma);
            if self.sharpness != 0.0 {
                let soft = gaussian_blur(plane, side, 1.0);
                for (x, s) in plane.iter_mut().zip(&soft) {
                    *x = (*x + self.sharpness * (*x - s)).max(0.0);
                }
            }
            for (x, v) in plane.iter_mut().zip(&vignette) {
                let lit = (*x + self.background[c]) * v;
                *x = GAMMA_REFERENCE * self.gain[c] * (lit / GAMMA_REFERENCE).powf(self.gamma[c]);
            }
        }
        let mut out = Vec::with_capacity(CHANNELS);
        for plane in planes {
            out.push(
                plane
                    .into_iter()
                    .map(|x| {
                        let sd = (COUNTS_PER_ELECTRON * x + self.read_noise.powi(2)).sqrt();
                        let noisy = x + CAMERA_OFFSET + sd * standard_normal(rng);
                        noisy.round().clamp(0.0, u16::MAX as f32) as u16
                    })
                    .collect(),
            );
        }
        out
    }

    fn vignette_map(&self, side: usize) -> Vec<f32> {
        let [cy, cx] = self.vignetting_center.map(|c| c * side as f32);
        let corner = (2.0f32).sqrt() * side as f32 / 2.0;
        (0..side * side)
            .map(|i| {
                let (y, x) = ((i / side) as f32 + 0.5, (i % side) as f32 + 0.5);
                let r2 = ((y - cy).powi(2) + (x - cx).powi(2)) / corner.powi(2);
                (1.0 - self.vignetting * r2).max(0.1)
            })
            .collect()
    }
}

/// Separable Gaussian blur with edge clamping; sigma below 0.3 px is a no-op.
pub fn gaussian_blur(plane: &[f32], side: usize, sigma: f32) -> Vec<f32> {
    if sigma < 0.3 {
        return plane.to_vec();
    }
    let radius = (3.0 * sigma).ceil() as isize;
    let mut kernel: Vec<f32> = (-radius..=radius)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= total);
    let last = side as isize - 1;
    let mut tmp = vec![0.0; plane.len()];
    for y in 0..side {
        for x in 0..side {
            tmp[y * side + x] = kernel
                .iter()
                .enumerate()
                .map(|(k, w)| {
                    let xx = (x as isize + k as isize - radius).clamp(0, last) as usize;
                    w * plane[y * side + xx]
                })
                .sum();
        }
    }
    let mut out = vec![0.0; plane.len()];
    for y in 0..side {
        for x in 0..side {
            out[y * side + x] = kernel
                .iter()
                .enumerate()
                .map(|(k, w)| {
                    let yy = (y as isize + k as isize - radius).clamp(0, last) as usize;
                    w * tmp[yy * side + x]
                })
                .sum();
        }
    }
    out
}
