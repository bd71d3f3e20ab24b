//! The stage scheduler: the DAG only. Each stage starts once the stages it
//! depends on are built, up to `jobs` at once; the first failure stops the
//! rest. What building a stage means is the caller's.

use std::sync::{mpsc, OnceLock};

/// The results of the stages built so far, each set once its stage is
/// built: a stage reads those it depends on.
pub struct Finished<T> {
    results: Vec<OnceLock<T>>,
}

impl<T> Finished<T> {
    /// The result of `stage`, which the scheduler built before any stage
    /// that depends on it started.
    pub fn get(&self, stage: usize) -> crate::Result<&T> {
        self.results
            .get(stage)
            .and_then(OnceLock::get)
            .ok_or_else(|| {
                crate::Error::msg(format!("stage {stage} is needed before it was built"))
            })
    }
}

/// Builds every stage with `build`, each once its `dependencies` are built,
/// up to `jobs` at once, each on a thread of its own that lives as long as
/// the stage (the sandbox ties each step's life to the thread that started
/// it). When one fails, `stop_others` is called once (to stop their running
/// steps), no stage starts any more, and the first failure is returned.
pub fn build_stages<T: Send + Sync>(
    dependencies: &[Vec<usize>],
    jobs: usize,
    stop_others: impl Fn() + Sync,
    build: impl Fn(usize, &Finished<T>) -> crate::Result<T> + Sync,
) -> crate::Result<Vec<T>> {
    let count = dependencies.len();
    let finished = Finished {
        results: (0..count).map(|_| OnceLock::new()).collect(),
    };
    let mut first_error = None;
    std::thread::scope(|scope| {
        let (done, results) = mpsc::channel::<(usize, crate::Result<T>)>();
        let mut started = vec![false; count];
        let mut built = vec![false; count];
        let mut running = 0;
        loop {
            if first_error.is_none() {
                for (stage, needs) in dependencies.iter().enumerate() {
                    let ready = !started[stage] && needs.iter().all(|&needed| built[needed]);
                    if !ready || running >= jobs.max(1) {
                        continue;
                    }
                    started[stage] = true;
                    running += 1;
                    let done = done.clone();
                    let (finished, build) = (&finished, &build);
                    scope.spawn(move || {
                        // A stage that panics still reports, or the build
                        // would wait for it forever.
                        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            build(stage, finished)
                        }))
                        .unwrap_or_else(|_| {
                            Err(crate::Error::msg(format!(
                                "building stage {stage} failed unexpectedly (a bug in kiln)"
                            )))
                        });
                        let _ = done.send((stage, result));
                    });
                }
            }
            if running == 0 {
                break;
            }
            let Ok((stage, result)) = results.recv() else {
                break;
            };
            running -= 1;
            match result {
                Ok(output) => {
                    let _ = finished.results[stage].set(output);
                    built[stage] = true;
                }
                Err(error) if first_error.is_none() => {
                    stop_others();
                    first_error = Some(error);
                }
                Err(_) => {}
            }
        }
    });
    if let Some(error) = first_error {
        return Err(error);
    }
    finished
        .results
        .into_iter()
        .enumerate()
        .map(|(stage, result)| {
            result
                .into_inner()
                .ok_or_else(|| crate::Error::msg(format!("stage {stage} was not built")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    #[test]
    fn stages_start_after_what_they_depend_on() {
        // 0 and 1 are independent; 2 needs both; 3 needs 2.
        let dependencies = vec![vec![], vec![], vec![0, 1], vec![2]];
        let order = Mutex::new(Vec::new());
        let outputs = build_stages(
            &dependencies,
            4,
            || {},
            |stage, finished| {
                for &needed in &dependencies[stage] {
                    assert!(finished.get(needed).is_ok(), "{needed} before {stage}");
                }
                order.lock().expect("order").push(stage);
                Ok(stage * 10)
            },
        )
        .expect("build");
        assert_eq!(outputs, [0, 10, 20, 30]);
        let order = order.into_inner().expect("order");
        assert_eq!(&order[2..], [2, 3]);
    }

    #[test]
    fn no_more_than_jobs_stages_run_at_once() {
        let dependencies = vec![vec![]; 6];
        let running = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        build_stages(
            &dependencies,
            2,
            || {},
            |_, _| {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(20));
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            },
        )
        .expect("build");
        let most = most.load(Ordering::SeqCst);
        assert!((1..=2).contains(&most), "{most} at once");
    }

    #[test]
    fn the_first_failure_stops_the_others_and_starts_nothing_new() {
        // 1 fails; 2 depends on it and must never start.
        let dependencies = vec![vec![], vec![], vec![1]];
        let stops = AtomicUsize::new(0);
        let started = Mutex::new(Vec::new());
        let error = build_stages(
            &dependencies,
            1,
            || {
                stops.fetch_add(1, Ordering::SeqCst);
            },
            |stage, _| {
                started.lock().expect("started").push(stage);
                if stage == 1 {
                    return Err(crate::Error::msg("stage 1 broke"));
                }
                Ok(())
            },
        )
        .unwrap_err();
        assert_eq!(error.to_string(), "stage 1 broke");
        assert_eq!(stops.load(Ordering::SeqCst), 1);
        assert_eq!(started.into_inner().expect("started"), [0, 1]);
    }

    #[test]
    fn a_stage_that_panics_is_a_failure_not_a_hang() {
        let dependencies = vec![vec![]];
        let error = build_stages(
            &dependencies,
            1,
            || {},
            |_, _| -> crate::Result<()> { panic!("a bug") },
        )
        .unwrap_err();
        assert!(error.to_string().contains("a bug in kiln"), "{error}");
    }
}
