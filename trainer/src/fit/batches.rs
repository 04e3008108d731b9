//! From a split and the decoded images to training minibatches: which
//! images train, their class and plate indices, and random dihedral
//! augmentation (flips and quarter turns: a microscope field has no
//! preferred orientation).

use candle_core::{Device, Result, Tensor};
use rand::Rng;

use crate::dataset::{Dataset, EnvLevel, Images, Split};
use crate::methods::Batch;

/// Images of one part of a split, with their class and environment indices.
#[derive(Clone, Debug)]
pub struct Part {
    /// Image indices into [`Images`].
    pub images: Vec<usize>,
    /// Class index of each.
    pub classes: Vec<usize>,
    /// Plate index of each, into [`Parts::plates`].
    pub plates: Vec<usize>,
}

/// The train, validation and test images of a split.
#[derive(Clone, Debug)]
pub struct Parts {
    /// Training images.
    pub train: Part,
    /// Validation images.
    pub val: Part,
    /// Test images.
    pub test: Part,
    /// Plate names; training plates first (`0..train_plates`), so the
    /// environment heads of DANN cover exactly the training plates.
    pub plates: Vec<String>,
    /// How many plates occur in training.
    pub train_plates: usize,
}

impl Parts {
    /// Assign every image to its split part.
    pub fn new(data: &Dataset, split: &Split, images: &Images) -> Parts {
        let plate_of = |row: usize| {
            data.manifest.rows[row]
                .env(EnvLevel::Plate)
                .unwrap_or_default()
        };
        let mut plates: Vec<String> = Vec::new();
        for &row in split.train.iter().chain(&split.val).chain(&split.test) {
            let p = plate_of(row);
            if !plates.contains(&p) {
                plates.push(p);
            }
        }
        let train_plates = split
            .train
            .iter()
            .map(|&r| plate_of(r))
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        let mut part_of = vec![3u8; data.manifest.rows.len()];
        for (k, rows) in [&split.train, &split.val, &split.test].iter().enumerate() {
            for &r in rows.iter() {
                part_of[r] = k as u8;
            }
        }
        let mut parts = [(); 3].map(|_| Part {
            images: Vec::new(),
            classes: Vec::new(),
            plates: Vec::new(),
        });
        for (i, &row) in images.site_of.iter().enumerate() {
            let Some(part) = parts.get_mut(part_of[row] as usize) else {
                continue;
            };
            part.images.push(i);
            part.classes.push(data.labels[row]);
            part.plates
                .push(plates.iter().position(|p| *p == plate_of(row)).unwrap_or(0));
        }
        let [train, val, test] = parts;
        Parts {
            train,
            val,
            test,
            plates,
            train_plates,
        }
    }
}

/// Stack `indices` (positions in `part`) into a batch, each image under a
/// random element of the dihedral group when `augment` is set.
pub fn batch(
    images: &Images,
    part: &Part,
    indices: &[usize],
    augment: Option<&mut dyn rand::RngCore>,
    device: &Device,
) -> Result<Batch> {
    let [c, h, w] = images.shape;
    let mut data = Vec::with_capacity(indices.len() * c * h * w);
    let mut rng = augment;
    for &i in indices {
        let image = images.image(part.images[i]);
        match rng.as_deref_mut() {
            Some(r) => dihedral(image, c, h, w, augmentation(r, h, w), &mut data),
            None => data.extend_from_slice(image),
        }
    }
    let y: Vec<u32> = indices.iter().map(|&i| part.classes[i] as u32).collect();
    let env: Vec<u32> = indices.iter().map(|&i| part.plates[i] as u32).collect();
    Ok(Batch {
        x: Tensor::from_vec(data, (indices.len(), c, h, w), device)?,
        y: Tensor::new(y, device)?,
        env: Tensor::new(env, device)?,
    })
}

/// The dihedral element an augmented `h` x `w` image gets: any of the 8
/// for a square image, flips only otherwise. Batching and the replay of a
/// resumed run both draw through here, so they consume the stream alike.
pub fn augmentation(rng: &mut (impl rand::RngCore + ?Sized), h: usize, w: usize) -> u8 {
    rng.random_range(0..if h == w { 8 } else { 4 })
}

/// Append `image` transformed by dihedral element `t`: bit 0 flips
/// columns, bit 1 flips rows, bit 2 transposes (square images only).
fn dihedral(image: &[f32], c: usize, h: usize, w: usize, t: u8, out: &mut Vec<f32>) {
    for ch in 0..c {
        let plane = &image[ch * h * w..(ch + 1) * h * w];
        for y in 0..h {
            for x in 0..w {
                let (mut sy, mut sx) = if t & 4 != 0 { (x, y) } else { (y, x) };
                if t & 2 != 0 {
                    sy = h - 1 - sy;
                }
                if t & 1 != 0 {
                    sx = w - 1 - sx;
                }
                out.push(plane[sy * w + sx]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dihedral_elements_are_the_eight_symmetries() {
        // 1 channel, 2x2: [a b; c d] = [1 2; 3 4].
        let img = [1.0, 2.0, 3.0, 4.0];
        let all: Vec<Vec<f32>> = (0..8)
            .map(|t| {
                let mut out = Vec::new();
                dihedral(&img, 1, 2, 2, t, &mut out);
                out
            })
            .collect();
        assert_eq!(all[0], img);
        assert_eq!(all[1], [2.0, 1.0, 4.0, 3.0], "column flip");
        assert_eq!(all[2], [3.0, 4.0, 1.0, 2.0], "row flip");
        assert_eq!(all[4], [1.0, 3.0, 2.0, 4.0], "transpose");
        let distinct: std::collections::BTreeSet<Vec<u32>> = all
            .iter()
            .map(|v| v.iter().map(|x| *x as u32).collect())
            .collect();
        assert_eq!(distinct.len(), 8);
    }
}
