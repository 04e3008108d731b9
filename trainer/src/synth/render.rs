//! Rendering the clean specimen: cells drawn into one plane per channel
//! (dna, actin, mito, lyso) before the microscope's effects.

use rand::Rng;

use super::CHANNELS;
use super::phenotype::Morphology;
use crate::random::{poisson, standard_normal};

/// Channel planes of one field.
pub struct Field {
    side: usize,
    /// `CHANNELS` planes of `side * side` samples.
    pub planes: Vec<Vec<f32>>,
}

impl Field {
    /// An empty (black) field.
    pub fn new(side: usize) -> Field {
        Field {
            side,
            planes: vec![vec![0.0; side * side]; CHANNELS],
        }
    }

    /// Draw one cell centred at `(cy, cx)`; lengths are multiplied by `scale`.
    pub fn draw_cell(
        &mut self,
        cell: &Morphology,
        (cy, cx): (f32, f32),
        scale: f32,
        rng: &mut impl Rng,
    ) {
        let shape = CellShape::draw(cell, (cy, cx), scale, rng);
        self.draw_body(cell, &shape, scale, rng);
        self.draw_mitochondria(cell, &shape, scale, rng);
        self.draw_spots(cell, &shape, scale, rng);
    }

    /// Nucleus (dna, with chromatin texture) and cell body (actin, bright cortex).
    fn draw_body(&mut self, cell: &Morphology, s: &CellShape, scale: f32, rng: &mut impl Rng) {
        // Chromatin: a few plane waves of ~2.5 px period at scale 1.
        let waves: Vec<(f32, f32, f32)> = (0..3)
            .map(|_| {
                let angle = rng.random::<f32>() * std::f32::consts::PI;
                let k = std::f32::consts::TAU / (2.5 * scale * rng.random_range(0.8..1.3));
                (k * angle.cos(), k * angle.sin(), rng.random::<f32>() * 6.3)
            })
            .collect();
        let reach = s.max_radius() + 2.0;
        let cortex = 1.2 * scale;
        for (y, x) in self.pixels_near(s.center, reach) {
            let (py, px) = (y as f32 + 0.5, x as f32 + 0.5);
            let i = y * self.side + x;
            let inside_cell = s.cell_depth(py, px);
            if inside_cell > -1.5 {
                let body = sigmoid(inside_cell / 0.6);
                let rim = (-(inside_cell * inside_cell) / (2.0 * cortex * cortex)).exp();
                self.planes[1][i] += cell.intensity[1] * body * (0.45 + 0.9 * rim);
            }
            let inside_nucleus = s.nucleus_depth(py, px);
            if inside_nucleus > -1.5 {
                let texture: f32 = waves
                    .iter()
                    .map(|(ky, kx, phase)| (ky * py + kx * px + phase).sin())
                    .sum::<f32>()
                    / 3.0;
                let n = sigmoid(inside_nucleus / 0.5);
                self.planes[0][i] += cell.intensity[0] * n * (1.0 + 0.3 * texture);
            }
        }
    }

    /// Mitochondria: random-walk filaments in the cytoplasm.
    fn draw_mitochondria(
        &mut self,
        cell: &Morphology,
        s: &CellShape,
        scale: f32,
        rng: &mut impl Rng,
    ) {
        let cytoplasm = std::f32::consts::PI * (s.radius.powi(2) - s.nucleus_radius.powi(2));
        let count = (cell.mito_density * cytoplasm.max(0.0) / (100.0 * scale * scale)).round();
        let amplitude = cell.intensity[2] * 0.6;
        for _ in 0..count as usize {
            let Some(mut p) = s.cytoplasm_point(rng, 0.0) else {
                continue;
            };
            let mut heading = rng.random::<f32>() * std::f32::consts::TAU;
            let steps = (cell.mito_length * (0.3 * standard_normal(rng)).exp()).round() as usize;
            for _ in 0..steps.max(1) {
                self.splat(2, p, 0.55 * scale, amplitude);
                heading += 0.35 * standard_normal(rng);
                let next = (p.0 + scale * heading.sin(), p.1 + scale * heading.cos());
                if s.cell_depth(next.0, next.1) < 0.0 {
                    break;
                }
                p = next;
            }
        }
    }

    /// Lysosome-like puncta, more or less packed around the nucleus.
    fn draw_spots(&mut self, cell: &Morphology, s: &CellShape, scale: f32, rng: &mut impl Rng) {
        let count = poisson(cell.spot_count, rng);
        for _ in 0..count {
            let Some(p) = s.cytoplasm_point(rng, cell.spot_clustering) else {
                continue;
            };
            let brightness = cell.intensity[3] * (0.4 * standard_normal(rng)).exp();
            self.splat(3, p, 0.7 * scale, brightness);
        }
    }

    /// Add a Gaussian of peak `amplitude` and width `sigma` at `p`.
    fn splat(&mut self, channel: usize, (cy, cx): (f32, f32), sigma: f32, amplitude: f32) {
        for (y, x) in self.pixels_near((cy, cx), 3.0 * sigma + 1.0) {
            let d2 = (y as f32 + 0.5 - cy).powi(2) + (x as f32 + 0.5 - cx).powi(2);
            self.planes[channel][y * self.side + x] +=
                amplitude * (-d2 / (2.0 * sigma * sigma)).exp();
        }
    }

    fn pixels_near(&self, (cy, cx): (f32, f32), reach: f32) -> Vec<(usize, usize)> {
        let span = |c: f32| {
            let lo = (c - reach).floor().max(0.0) as usize;
            let hi = ((c + reach).ceil().max(0.0) as usize).min(self.side);
            lo..hi
        };
        let xs = span(cx);
        span(cy)
            .flat_map(|y| xs.clone().map(move |x| (y, x)))
            .collect()
    }
}

/// The geometry of one cell: an irregular outline around a centre and an
/// elliptic nucleus off the centre.
struct CellShape {
    center: (f32, f32),
    radius: f32,
    /// Outline harmonics: `(order, amplitude, phase)`.
    harmonics: [(f32, f32, f32); 3],
    nucleus_center: (f32, f32),
    nucleus_radius: f32,
    /// Semi-axes and orientation of the nucleus.
    axes: (f32, f32),
    angle: f32,
}

impl CellShape {
    fn draw(cell: &Morphology, center: (f32, f32), scale: f32, rng: &mut impl Rng) -> CellShape {
        let radius = cell.cell_radius * scale;
        let nucleus_radius = cell.nucleus_radius * scale;
        let harmonics = [2.0, 3.0, 5.0].map(|order| {
            (
                order,
                rng.random_range(0.0..0.18) / (order / 2.0),
                rng.random::<f32>() * std::f32::consts::TAU,
            )
        });
        let room = (radius * 0.8 - nucleus_radius).max(0.0) * 0.5;
        let offset = room * rng.random::<f32>();
        let direction = rng.random::<f32>() * std::f32::consts::TAU;
        let e = cell.nucleus_elongation.max(1.0).sqrt();
        CellShape {
            center,
            radius,
            harmonics,
            nucleus_center: (
                center.0 + offset * direction.sin(),
                center.1 + offset * direction.cos(),
            ),
            nucleus_radius,
            axes: (nucleus_radius * e, nucleus_radius / e),
            angle: rng.random::<f32>() * std::f32::consts::PI,
        }
    }

    fn max_radius(&self) -> f32 {
        self.radius * (1.0 + self.harmonics.iter().map(|h| h.1).sum::<f32>())
    }

    /// Signed distance inside the outline (pixels; negative outside).
    fn cell_depth(&self, y: f32, x: f32) -> f32 {
        let (dy, dx) = (y - self.center.0, x - self.center.1);
        let theta = dy.atan2(dx);
        let r = self.radius
            * (1.0
                + self
                    .harmonics
                    .iter()
                    .map(|(k, a, phase)| a * (k * theta + phase).cos())
                    .sum::<f32>());
        r - (dy * dy + dx * dx).sqrt()
    }

    /// Approximate signed distance inside the nucleus ellipse.
    fn nucleus_depth(&self, y: f32, x: f32) -> f32 {
        let (dy, dx) = (y - self.nucleus_center.0, x - self.nucleus_center.1);
        let (sin, cos) = self.angle.sin_cos();
        let u = dx * cos + dy * sin;
        let v = -dx * sin + dy * cos;
        let q = ((u / self.axes.0).powi(2) + (v / self.axes.1).powi(2)).sqrt();
        (1.0 - q) * self.nucleus_radius
    }

    /// A point of the cytoplasm; `clustering` near 1 keeps it close to the nucleus.
    fn cytoplasm_point(&self, rng: &mut impl Rng, clustering: f32) -> Option<(f32, f32)> {
        for _ in 0..20 {
            let u: f32 = rng.random();
            let t = u.powf(1.0 + 4.0 * clustering);
            let r = self.nucleus_radius * 1.05 + t * (self.radius - self.nucleus_radius * 1.05);
            let angle = rng.random::<f32>() * std::f32::consts::TAU;
            let p = (
                self.nucleus_center.0 + r * angle.sin(),
                self.nucleus_center.1 + r * angle.cos(),
            );
            if self.cell_depth(p.0, p.1) > 0.5 && self.nucleus_depth(p.0, p.1) < 0.0 {
                return Some(p);
            }
        }
        None
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}
