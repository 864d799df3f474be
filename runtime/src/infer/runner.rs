//! Where inference runs relative to the control loop.
//!
//! A ResNet-18 takes ~80 ms on two CPU cores while the loop must emit a command every 20-100 ms,
//! so on the robot inference runs on its own named thread ([`ThreadedRunner`]) and the loop keeps
//! executing the current chunk meanwhile. Requests travel between the two as preallocated buffers
//! through bounded channels of capacity one: nothing is allocated or locked by the loop per tick,
//! and at most one request is ever in flight (an overrun is counted, never queued).
//! [`InlineRunner`] runs the same request on the caller's thread: deterministic, for tests,
//! warm-up and `reflex bench`.

use crate::infer::policy::{Policy, PolicyError};
use reflex_models::Manifest;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::time::Instant;

/// One observation (with its history) going to the network and its result coming back.
///
/// With an observation history ([`Request::obs_steps`] > 1, a Diffusion Policy's
/// `n_obs_steps`), each camera's buffer holds the steps one after the other, oldest first and
/// the current observation last (`[obs_steps][C][H][W]`), and so does the state
/// (`[obs_steps][state_dim]`).
#[derive(Debug)]
pub struct Request {
    /// Preprocessed CHW images, one buffer per camera, `obs_steps` images each.
    pub images: Vec<Vec<f32>>,
    /// Normalized state, `obs_steps` vectors.
    pub state: Vec<f32>,
    /// Observation steps the buffers hold (1: the current observation only).
    pub obs_steps: usize,
    /// Capture time of the oldest frame in this observation (loop clock, ns).
    pub obs_ns: u64,
    /// Control tick at which the request was submitted.
    pub submit_tick: u64,
    /// Raw network output (normalized), filled by the runner.
    pub output: Vec<f32>,
    /// Wall time the network took.
    pub infer_ns: u64,
    /// An encoder + denoiser policy's split of that time ([`Policy::diffusion_timings`]).
    pub diffusion: Option<crate::infer::policy::DiffusionTimings>,
    pub error: Option<PolicyError>,
}

impl Request {
    /// Buffers for one observation: CHW values per camera, state values, output values.
    pub fn new(image_lens: &[usize], state_len: usize, output_len: usize) -> Self {
        Request::with_history(image_lens, state_len, output_len, 1)
    }

    /// Buffers for `obs_steps` observations (at least 1) of the given sizes each.
    pub fn with_history(
        image_lens: &[usize],
        state_len: usize,
        output_len: usize,
        obs_steps: usize,
    ) -> Self {
        let obs_steps = obs_steps.max(1);
        Request {
            images: image_lens
                .iter()
                .map(|&n| vec![0.0; n * obs_steps])
                .collect(),
            state: vec![0.0; state_len * obs_steps],
            obs_steps,
            obs_ns: 0,
            submit_tick: 0,
            output: vec![0.0; output_len],
            infer_ns: 0,
            diffusion: None,
            error: None,
        }
    }

    /// Buffers sized for a bundle's policy: each camera's `channels x height x width` after
    /// preprocessing (the resize size), the state dimension, `horizon x action dimension`, for
    /// the manifest's observation history ([`Manifest::n_obs_steps`]).
    pub fn for_manifest(m: &Manifest) -> Self {
        let image_lens: Vec<usize> = m
            .cameras
            .iter()
            .map(|c| {
                let p = &c.preprocess;
                p.color.channels() * p.resize.height as usize * p.resize.width as usize
            })
            .collect();
        Request::with_history(
            &image_lens,
            m.state.names.len(),
            m.action.output.horizon() * m.action.names.len(),
            m.n_obs_steps(),
        )
    }
}

/// Copies the request's observations into the policy's inputs: the last step into the current
/// inputs, earlier steps into the past ones (a policy without history gets the current one only).
fn write_inputs(policy: &mut dyn Policy, req: &Request) {
    let n = req.obs_steps;
    let current = n - 1;
    for (i, img) in req.images.iter().enumerate() {
        let len = img.len() / n;
        let dst = policy.camera_input(i);
        if dst.len() == len {
            dst.copy_from_slice(&img[current * len..]);
        }
        for step in 0..current {
            if let Some(dst) = policy.past_camera_input(step, i) {
                if dst.len() == len {
                    dst.copy_from_slice(&img[step * len..(step + 1) * len]);
                }
            }
        }
    }
    let len = req.state.len() / n;
    if let Some(dst) = policy.state_input() {
        if dst.len() == len {
            dst.copy_from_slice(&req.state[current * len..]);
        }
    }
    for step in 0..current {
        if let Some(dst) = policy.past_state_input(step) {
            if dst.len() == len {
                dst.copy_from_slice(&req.state[step * len..(step + 1) * len]);
            }
        }
    }
}

fn execute(policy: &mut dyn Policy, req: &mut Request) {
    write_inputs(policy, req);
    let t = Instant::now();
    let r = policy.run();
    req.infer_ns = t.elapsed().as_nanos() as u64;
    req.diffusion = policy.diffusion_timings();
    match r {
        Ok(()) => {
            let out = policy.output();
            if out.len() == req.output.len() {
                req.output.copy_from_slice(out);
                req.error = None;
            } else {
                req.error = Some(PolicyError::OutputSize {
                    policy: policy.name(),
                    got: out.len(),
                    expected: req.output.len(),
                });
            }
        }
        Err(e) => req.error = Some(e),
    }
}

/// Runs inference for the loop, inline or on a worker.
pub trait InferenceRunner {
    /// The free request buffer to fill, or `None` while a request is in flight.
    fn slot(&mut self) -> Option<&mut Request>;
    /// Hands the filled slot to the network.
    fn submit(&mut self) -> Result<(), PolicyError>;
    /// A finished request, if any; it stays readable until [`InferenceRunner::release`].
    fn poll(&mut self) -> Option<&Request>;
    /// Returns the finished request's buffer to the pool.
    fn release(&mut self);
    fn in_flight(&self) -> bool;
    /// Blocks until the in-flight request finishes (warm-up and shutdown only).
    fn wait(&mut self) -> Option<&Request>;
}

/// Runs the network on the caller's thread, at `submit`.
pub struct InlineRunner<B: Policy> {
    policy: B,
    req: Request,
    state: InlineState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InlineState {
    Free,
    Done,
}

impl<B: Policy> InlineRunner<B> {
    pub fn new(policy: B, req: Request) -> Self {
        InlineRunner {
            policy,
            req,
            state: InlineState::Free,
        }
    }
    pub fn policy_mut(&mut self) -> &mut B {
        &mut self.policy
    }
}

impl<B: Policy> InferenceRunner for InlineRunner<B> {
    fn slot(&mut self) -> Option<&mut Request> {
        (self.state == InlineState::Free).then_some(&mut self.req)
    }
    fn submit(&mut self) -> Result<(), PolicyError> {
        execute(&mut self.policy, &mut self.req);
        self.state = InlineState::Done;
        Ok(())
    }
    fn poll(&mut self) -> Option<&Request> {
        (self.state == InlineState::Done).then_some(&self.req)
    }
    fn release(&mut self) {
        self.state = InlineState::Free;
    }
    fn in_flight(&self) -> bool {
        false
    }
    fn wait(&mut self) -> Option<&Request> {
        self.poll()
    }
}

/// Runs the network on a dedicated thread named `reflex-infer`.
pub struct ThreadedRunner {
    home: Option<Request>,
    done: Option<Request>,
    to_worker: Option<SyncSender<Request>>,
    from_worker: Receiver<Request>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl ThreadedRunner {
    pub fn spawn<B: Policy + 'static>(mut policy: B, req: Request) -> std::io::Result<Self> {
        let (to_worker, work_rx) = sync_channel::<Request>(1);
        let (done_tx, from_worker) = sync_channel::<Request>(1);
        let worker = std::thread::Builder::new()
            .name("reflex-infer".into())
            .spawn(move || {
                while let Ok(mut req) = work_rx.recv() {
                    execute(&mut policy, &mut req);
                    if done_tx.send(req).is_err() {
                        break;
                    }
                }
            })?;
        Ok(ThreadedRunner {
            home: Some(req),
            done: None,
            to_worker: Some(to_worker),
            from_worker,
            worker: Some(worker),
        })
    }

    fn worker_gone() -> PolicyError {
        PolicyError::WorkerGone
    }
}

impl InferenceRunner for ThreadedRunner {
    fn slot(&mut self) -> Option<&mut Request> {
        self.home.as_mut()
    }
    fn submit(&mut self) -> Result<(), PolicyError> {
        let req = self.home.take().ok_or_else(Self::worker_gone)?;
        let tx = self.to_worker.as_ref().ok_or_else(Self::worker_gone)?;
        tx.send(req).map_err(|_| Self::worker_gone())
    }
    fn poll(&mut self) -> Option<&Request> {
        if self.done.is_none() {
            match self.from_worker.try_recv() {
                Ok(r) => self.done = Some(r),
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => {}
            }
        }
        self.done.as_ref()
    }
    fn release(&mut self) {
        if let Some(r) = self.done.take() {
            self.home = Some(r);
        }
    }
    fn in_flight(&self) -> bool {
        self.home.is_none() && self.done.is_none()
    }
    fn wait(&mut self) -> Option<&Request> {
        if self.done.is_none() && self.home.is_none() {
            if let Ok(r) = self.from_worker.recv() {
                self.done = Some(r);
            }
        }
        self.done.as_ref()
    }
}

impl Drop for ThreadedRunner {
    fn drop(&mut self) {
        self.to_worker = None;
        if let Some(w) = self.worker.take() {
            // The worker finishes its current request (bounded by one inference) and exits.
            let _ = w.join();
        }
    }
}

impl<R: InferenceRunner + ?Sized> InferenceRunner for Box<R> {
    fn slot(&mut self) -> Option<&mut Request> {
        (**self).slot()
    }
    fn submit(&mut self) -> Result<(), PolicyError> {
        (**self).submit()
    }
    fn poll(&mut self) -> Option<&Request> {
        (**self).poll()
    }
    fn release(&mut self) {
        (**self).release()
    }
    fn in_flight(&self) -> bool {
        (**self).in_flight()
    }
    fn wait(&mut self) -> Option<&Request> {
        (**self).wait()
    }
}
