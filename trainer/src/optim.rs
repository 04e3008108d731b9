//! AdamW (PyTorch semantics) with its state exposed, so a checkpoint holds
//! the moments and `fit` resumes exactly where it stopped.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

/// AdamW over named variables.
pub struct AdamW {
    params: Vec<(String, Var)>,
    /// Per variable, its first and second moments stacked (`[2, ..dims]`),
    /// so that one in-place op updates both.
    moments: Vec<Tensor>,
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
        let moments = params
            .iter()
            .map(|(_, p)| {
                let zeros = p.zeros_like()?;
                Tensor::stack(&[&zeros, &zeros], 0)
            })
            .collect::<Result<_>>()?;
        Ok(AdamW {
            params,
            moments,
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
                let hyper = fused::Hyper {
                    lr: self.lr,
                    weight_decay: self.weight_decay,
                    c1,
                    c2,
                };
                fused::step(p.as_tensor(), g, &self.moments[i], hyper)?;
                continue;
            }
            let (m, v) = (self.moments[i].get(0)?, self.moments[i].get(1)?);
            let m = ((m * BETA1)? + (g * (1.0 - BETA1))?)?;
            let v = ((v * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?;
            let update = ((&m / c1)? / ((&v / c2)?.sqrt()? + EPS)?)?;
            let decayed = (p.as_tensor() * (1.0 - self.lr * self.weight_decay))?;
            p.set(&(decayed - (update * self.lr)?)?)?;
            self.moments[i] = Tensor::stack(&[m, v], 0)?;
        }
        Ok(())
    }

    /// Moments and step count as named tensors (`adamw.m.<var>`, `adamw.v.<var>`, `adamw.step`).
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(2 * self.params.len() + 1);
        for (i, (name, _)) in self.params.iter().enumerate() {
            // Copies: the moments are updated in place by the next step.
            out.push((format!("adamw.m.{name}"), self.moments[i].get(0)?.copy()?));
            out.push((format!("adamw.v.{name}"), self.moments[i].get(1)?.copy()?));
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
            let m = get(format!("adamw.m.{name}"))?.to_device(p.device())?;
            let v = get(format!("adamw.v.{name}"))?.to_device(p.device())?;
            if m.dims() != p.dims() || v.dims() != p.dims() {
                return Err(candle_core::Error::Msg(format!(
                    "optimizer state of {name} has shape {:?}/{:?}, the variable {:?}",
                    m.dims(),
                    v.dims(),
                    p.dims()
                )));
            }
            // A new tensor (stack copies): the step updates it in place.
            self.moments[i] = Tensor::stack(&[m, v], 0)?;
        }
        if let Some(step) = saved.get("adamw.step") {
            self.step = step.to_vec1::<f32>()?.first().copied().unwrap_or(0.0) as u64;
        }
        Ok(())
    }
}

/// AdamW's update of one variable in place, on the CPU (the tensor-op
/// version above serves other devices): one pass updates both moments
/// from the gradient, a second the variable from them. Nothing is
/// allocated: a step used to write new variables and moments (3x the
/// model's size, zeroed first) and copy the variables back.
mod fused {
    use candle_core::backend::BackendStorage;
    use candle_core::{CpuStorage, InplaceOp2, Layout, Result, Tensor, WithDType};
    use rayon::prelude::*;

    use super::{BETA1, BETA2, EPS};
    use crate::nn::ops::{contiguous, contiguous_mut};

    /// Learning rate, decay and this step's bias corrections.
    #[derive(Clone, Copy)]
    pub struct Hyper {
        pub lr: f64,
        pub weight_decay: f64,
        pub c1: f64,
        pub c2: f64,
    }

    /// Elements per parallel task.
    const CHUNK: usize = 4096;

    /// `m, v` (stacked) from the gradient.
    struct Moments;

    /// The element types the step runs on, in their own precision (as
    /// PyTorch's AdamW does): through f64, the update's division and
    /// square root per element took most of the optimizer's time.
    pub trait Real: WithDType {
        /// Square root.
        fn sqrt(self) -> Self;
    }

    impl Real for f32 {
        fn sqrt(self) -> f32 {
            f32::sqrt(self)
        }
    }

    impl Real for f64 {
        fn sqrt(self) -> f64 {
            f64::sqrt(self)
        }
    }

    fn moments<T: Real>(mv: &mut [T], g: &[T]) {
        let (m, v) = mv.split_at_mut(g.len());
        let (b1, b2) = (T::from_f64(BETA1), T::from_f64(BETA2));
        let (a1, a2) = (T::from_f64(1.0 - BETA1), T::from_f64(1.0 - BETA2));
        m.par_chunks_mut(CHUNK)
            .zip(v.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .for_each(|((m, v), g)| {
                for ((m, v), &g) in m.iter_mut().zip(v.iter_mut()).zip(g) {
                    *m = b1 * *m + a1 * g;
                    *v = b2 * *v + a2 * g * g;
                }
            });
    }

    impl InplaceOp2 for Moments {
        fn name(&self) -> &'static str {
            "bfx-adamw-moments"
        }

        fn cpu_fwd(
            &self,
            mv: &mut CpuStorage,
            ml: &Layout,
            g: &CpuStorage,
            gl: &Layout,
        ) -> Result<()> {
            match (mv, g) {
                (CpuStorage::F32(mv), CpuStorage::F32(g)) => {
                    moments(contiguous_mut(mv, ml)?, contiguous(g, gl)?)
                }
                (CpuStorage::F64(mv), CpuStorage::F64(g)) => {
                    moments(contiguous_mut(mv, ml)?, contiguous(g, gl)?)
                }
                (mv, _) => candle_core::bail!("AdamW runs on f32 or f64, not {:?}", mv.dtype()),
            }
            Ok(())
        }
    }

    /// The variable from its (updated) moments.
    struct Update(Hyper);

    fn update<T: Real>(p: &mut [T], mv: &[T], h: Hyper) {
        let (m, v) = mv.split_at(p.len());
        // PyTorch's form: p * decay - (lr / c1) * m / (sqrt(v) / sqrt(c2) + eps).
        let decay = T::from_f64(1.0 - h.lr * h.weight_decay);
        let step_size = T::from_f64(h.lr / h.c1);
        let inv_sqrt_c2 = T::from_f64(1.0 / h.c2.sqrt());
        let eps = T::from_f64(EPS);
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks(CHUNK))
            .zip(v.par_chunks(CHUNK))
            .for_each(|((p, m), v)| {
                for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
                    *p = *p * decay - step_size * m / (v.sqrt() * inv_sqrt_c2 + eps);
                }
            });
    }

    impl InplaceOp2 for Update {
        fn name(&self) -> &'static str {
            "bfx-adamw-update"
        }

        fn cpu_fwd(
            &self,
            p: &mut CpuStorage,
            pl: &Layout,
            mv: &CpuStorage,
            ml: &Layout,
        ) -> Result<()> {
            match (p, mv) {
                (CpuStorage::F32(p), CpuStorage::F32(mv)) => {
                    update(contiguous_mut(p, pl)?, contiguous(mv, ml)?, self.0)
                }
                (CpuStorage::F64(p), CpuStorage::F64(mv)) => {
                    update(contiguous_mut(p, pl)?, contiguous(mv, ml)?, self.0)
                }
                (p, _) => candle_core::bail!("AdamW runs on f32 or f64, not {:?}", p.dtype()),
            }
            Ok(())
        }
    }

    /// Update the variable `p` and its moments `mv` (`[2, ..dims]`) in
    /// place from the gradient `g`.
    pub fn step(p: &Tensor, g: &Tensor, mv: &Tensor, h: Hyper) -> Result<()> {
        if g.dims() != p.dims() || mv.elem_count() != 2 * p.elem_count() {
            candle_core::bail!(
                "AdamW: gradient {:?} or moments {:?} do not fit variable {:?}",
                g.dims(),
                mv.dims(),
                p.dims()
            );
        }
        mv.inplace_op2(&g.contiguous()?, &Moments)?;
        p.inplace_op2(mv, &Update(h))
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
    use candle_core::{DType, Device, Var};

    use super::*;

    /// `[1, -2]` after `steps` steps of AdamW (lr 0.1, decay 0.01) on
    /// `sum((p - 3)^2)`: torch.optim.AdamW's update rule (decoupled
    /// decay first) replayed in f64.
    fn pytorch_adamw_on_a_quadratic(steps: i32) -> [f64; 2] {
        let mut expected = [1.0f64, -2.0];
        let (mut m, mut v) = ([0.0f64; 2], [0.0f64; 2]);
        for t in 1..=steps {
            for i in 0..2 {
                let g = 2.0 * (expected[i] - 3.0);
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                let mh = m[i] / (1.0 - 0.9f64.powi(t));
                let vh = v[i] / (1.0 - 0.999f64.powi(t));
                expected[i] = expected[i] * (1.0 - 0.1 * 0.01) - 0.1 * mh / (vh.sqrt() + 1e-8);
            }
        }
        expected
    }

    /// One step of `opt` on `sum((p - 3)^2)`.
    fn step_on_the_quadratic(opt: &mut AdamW, p: &Var) {
        let loss = (p.as_tensor() - 3.0)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
    }

    /// `p`'s values as f64.
    fn values(p: &Var) -> Vec<f64> {
        p.as_tensor()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// `steps` steps of [`AdamW`] on the quadratic of
    /// [`pytorch_adamw_on_a_quadratic`], on a variable of `dtype`.
    fn adamw_on_a_quadratic(dtype: DType, steps: i32) -> (AdamW, Var) {
        let start = Tensor::new(&[1.0f64, -2.0], &Device::Cpu).unwrap();
        let p = Var::from_tensor(&start.to_dtype(dtype).unwrap()).unwrap();
        let mut opt = AdamW::new(vec![("p".into(), p.clone())], 0.1, 0.01).unwrap();
        for _ in 0..steps {
            step_on_the_quadratic(&mut opt, &p);
        }
        (opt, p)
    }

    /// In f32 the step runs in f32, as PyTorch's does: to f32 rounding.
    #[test]
    fn matches_pytorch_adamw_in_f32() {
        let expected = pytorch_adamw_on_a_quadratic(5);
        let got = values(&adamw_on_a_quadratic(DType::F32, 5).1);
        for i in 0..2 {
            assert!(
                (got[i] - expected[i]).abs() < 1e-6 * expected[i].abs(),
                "{got:?} vs {expected:?}"
            );
        }
    }

    #[test]
    fn matches_pytorch_adamw_on_a_quadratic() {
        let expected = pytorch_adamw_on_a_quadratic(3);
        let (mut opt, p) = adamw_on_a_quadratic(DType::F64, 3);
        let got = values(&p);
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
        step_on_the_quadratic(&mut opt, &p);
        step_on_the_quadratic(&mut resumed, &q);
        assert_eq!(values(&p), values(&q));
    }
}
