//! AdamW (PyTorch semantics) with its state exposed, so a checkpoint holds
//! the moments and `fit` resumes exactly where it stopped.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

/// AdamW over named variables.
pub struct AdamW {
    params: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: u64,
    /// Learning rate.
    pub lr: f64,
    weight_decay: f64,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

impl AdamW {
    /// An optimizer over `params` (running statistics must not be among them).
    pub fn new(params: Vec<(String, Var)>, lr: f64, weight_decay: f64) -> Result<AdamW> {
        let m = params
            .iter()
            .map(|(_, p)| p.zeros_like())
            .collect::<Result<_>>()?;
        let v = params
            .iter()
            .map(|(_, p)| p.zeros_like())
            .collect::<Result<_>>()?;
        Ok(AdamW {
            params,
            m,
            v,
            step: 0,
            lr,
            weight_decay,
        })
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One update; variables without a gradient in `grads` are left alone.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let (c1, c2) = (1.0 - BETA1.powi(t), 1.0 - BETA2.powi(t));
        for (i, (_, p)) in self.params.iter().enumerate() {
            let Some(g) = grads.get(p.as_tensor()) else {
                continue;
            };
            if crate::nn::ops::fast(p.as_tensor()) {
                let (m, v) = (&self.m[i], &self.v[i]);
                let hyper = fused::Hyper {
                    lr: self.lr,
                    weight_decay: self.weight_decay,
                    c1,
                    c2,
                };
                let (np, nm, nv) = fused::step(p.as_tensor(), g, m, v, hyper)?;
                p.set(&np)?;
                (self.m[i], self.v[i]) = (nm, nv);
                continue;
            }
            self.m[i] = ((&self.m[i] * BETA1)? + (g * (1.0 - BETA1))?)?;
            self.v[i] = ((&self.v[i] * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?;
            let update = ((&self.m[i] / c1)? / ((&self.v[i] / c2)?.sqrt()? + EPS)?)?;
            let decayed = (p.as_tensor() * (1.0 - self.lr * self.weight_decay))?;
            p.set(&(decayed - (update * self.lr)?)?)?;
        }
        Ok(())
    }

    /// Moments and step count as named tensors (`adamw.m.<var>`, `adamw.v.<var>`, `adamw.step`).
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(2 * self.params.len() + 1);
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.push((format!("adamw.m.{name}"), self.m[i].clone()));
            out.push((format!("adamw.v.{name}"), self.v[i].clone()));
        }
        let device = self
            .params
            .first()
            .map(|(_, p)| p.device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        out.push((
            "adamw.step".into(),
            Tensor::new(&[self.step as f32], &device)?,
        ));
        Ok(out)
    }

    /// Restore moments and step count saved by [`AdamW::state`].
    pub fn load_state(&mut self, saved: &HashMap<String, Tensor>) -> Result<()> {
        for (i, (name, p)) in self.params.iter().enumerate() {
            let get = |k: String| {
                saved.get(&k).cloned().ok_or_else(|| {
                    candle_core::Error::Msg(format!("checkpoint lacks optimizer state {k}"))
                })
            };
            self.m[i] = get(format!("adamw.m.{name}"))?.to_device(p.device())?;
            self.v[i] = get(format!("adamw.v.{name}"))?.to_device(p.device())?;
        }
        if let Some(step) = saved.get("adamw.step") {
            self.step = step.to_vec1::<f32>()?.first().copied().unwrap_or(0.0) as u64;
        }
        Ok(())
    }
}

/// AdamW's update of one variable in a single pass over its elements
/// (on the CPU; the tensor-op version above serves other devices).
mod fused {
    use candle_core::{Result, Tensor, WithDType};
    use rayon::prelude::*;

    use super::{BETA1, BETA2, EPS};
    use crate::nn::ops::cpu_slice;

    /// Learning rate, decay and this step's bias corrections.
    #[derive(Clone, Copy)]
    pub struct Hyper {
        pub lr: f64,
        pub weight_decay: f64,
        pub c1: f64,
        pub c2: f64,
    }

    /// New parameter and moments from the old ones and the gradient.
    fn kernel<T: WithDType>(
        p: &[T],
        g: &[T],
        m: &[T],
        v: &[T],
        h: Hyper,
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let zero = T::from_f64(0.0);
        let (mut p2, mut m2, mut v2) = (
            vec![zero; p.len()],
            vec![zero; p.len()],
            vec![zero; p.len()],
        );
        let decay = 1.0 - h.lr * h.weight_decay;
        const CHUNK: usize = 4096;
        p2.par_chunks_mut(CHUNK)
            .zip(m2.par_chunks_mut(CHUNK))
            .zip(v2.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(c, ((p2, m2), v2))| {
                let base = c * CHUNK;
                for i in 0..p2.len() {
                    let k = base + i;
                    let gi = g[k].to_f64();
                    let mi = BETA1 * m[k].to_f64() + (1.0 - BETA1) * gi;
                    let vi = BETA2 * v[k].to_f64() + (1.0 - BETA2) * gi * gi;
                    let step = (mi / h.c1) / ((vi / h.c2).sqrt() + EPS);
                    p2[i] = T::from_f64(p[k].to_f64() * decay - h.lr * step);
                    m2[i] = T::from_f64(mi);
                    v2[i] = T::from_f64(vi);
                }
            });
        (p2, m2, v2)
    }

    fn update<T: WithDType>(
        p: &Tensor,
        g: &Tensor,
        m: &Tensor,
        v: &Tensor,
        h: Hyper,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (p2, m2, v2) = cpu_slice::<T, _>(p, |ps| {
            cpu_slice::<T, _>(g, |gs| {
                cpu_slice::<T, _>(m, |ms| cpu_slice::<T, _>(v, |vs| kernel(ps, gs, ms, vs, h)))
            })
        })????;
        let back = |data: Vec<T>| Tensor::from_vec(data, p.dims(), p.device());
        Ok((back(p2)?, back(m2)?, back(v2)?))
    }

    /// New `(parameter, first moment, second moment)`.
    pub fn step(
        p: &Tensor,
        g: &Tensor,
        m: &Tensor,
        v: &Tensor,
        h: Hyper,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        match p.dtype() {
            candle_core::DType::F32 => update::<f32>(p, g, m, v, h),
            _ => update::<f64>(p, g, m, v, h),
        }
    }
}

/// The trainable variables of `map` under `prefix` (running statistics
/// excluded), in name order.
pub fn trainable(map: &candle_nn::VarMap, prefix: &str) -> Vec<(String, Var)> {
    let data = match map.data().lock() {
        Ok(d) => d,
        Err(poisoned) => poisoned.into_inner(),
    };
    let mut vars: Vec<(String, Var)> = data
        .iter()
        .filter(|(n, _)| {
            n.starts_with(prefix) && !n.ends_with("running_mean") && !n.ends_with("running_var")
        })
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    #[test]
    fn matches_pytorch_adamw_on_a_quadratic() {
        // torch.optim.AdamW's update rule (decoupled decay first), replayed in f64 beside it.
        let p = Var::new(&[1.0f64, -2.0], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(vec![("p".into(), p.clone())], 0.1, 0.01).unwrap();
        let mut expected = [1.0f64, -2.0];
        let (mut m, mut v) = ([0.0f64; 2], [0.0f64; 2]);
        for t in 1..=3 {
            let loss = (p.as_tensor() - 3.0)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap();
            opt.step(&loss.backward().unwrap()).unwrap();
            for i in 0..2 {
                let g = 2.0 * (expected[i] - 3.0);
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                let mh = m[i] / (1.0 - 0.9f64.powi(t));
                let vh = v[i] / (1.0 - 0.999f64.powi(t));
                expected[i] = expected[i] * (1.0 - 0.1 * 0.01) - 0.1 * mh / (vh.sqrt() + 1e-8);
            }
        }
        let got = p.as_tensor().to_vec1::<f64>().unwrap();
        for i in 0..2 {
            assert!(
                (got[i] - expected[i]).abs() < 1e-12,
                "{got:?} vs {expected:?}"
            );
        }
        // State round trip resumes identically.
        let state: HashMap<String, Tensor> = opt.state().unwrap().into_iter().collect();
        let q = Var::new(got.as_slice(), &Device::Cpu).unwrap();
        let mut resumed = AdamW::new(vec![("p".into(), q.clone())], 0.1, 0.01).unwrap();
        resumed.load_state(&state).unwrap();
        assert_eq!(resumed.steps(), 3);
        let loss = (p.as_tensor() - 3.0)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
        let loss = (q.as_tensor() - 3.0)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        resumed.step(&loss.backward().unwrap()).unwrap();
        assert_eq!(
            p.as_tensor().to_vec1::<f64>().unwrap(),
            q.as_tensor().to_vec1::<f64>().unwrap()
        );
    }
}
