//! GDPO groups collected across requests.
//!
//! GDPO normalizes each class within a prompt's group of completions. OpenRLHF ≥ 0.9.1 sends one
//! completion per request (`SingleTurnAgentExecutor`: `{"query": [q], "prompts": [p],
//! "labels": [l]}`, the `n_samples_per_prompt` requests of one prompt at about the same time),
//! so a request alone holds no group. With a group size configured, each completion waits for
//! the others of its prompt (same example) until the group is full or the window since the
//! group's first completion has passed; then every member gets its reward from the group's
//! normalization.

use rubric::RewardVector;
use schedule::Target;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// How completions are grouped across requests.
#[derive(Debug, Clone)]
pub struct GroupSettings {
    /// Completions per group (OpenRLHF: `n_samples_per_prompt`); 0 = no collection across
    /// requests (a group is a prompt's completions within one request).
    pub size: usize,
    /// How long a group waits for its last completion after its first arrived; a group still
    /// short then is normalized as it is.
    pub window: Duration,
}

impl Default for GroupSettings {
    fn default() -> Self {
        GroupSettings {
            size: 0,
            // under the request timeout (170 s), so a waiting request is answered, not dropped
            window: Duration::from_secs(120),
        }
    }
}

/// A member's reward and the size of the group it was normalized in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grouped {
    /// `None` = no signal (the group had no spread, or was a single completion).
    pub reward: Option<f64>,
    pub group_size: usize,
}

struct Open {
    id: u64,
    deadline: Instant,
    members: Vec<(RewardVector, oneshot::Sender<Grouped>)>,
}

/// The groups being filled, by example.
pub struct Collector {
    settings: GroupSettings,
    classes: usize,
    eps: f64,
    open: Mutex<(u64, HashMap<usize, Open>)>,
}

/// A completion's place in a group; [`Collector::wait`] gives its reward.
pub struct Ticket {
    example: usize,
    id: u64,
    deadline: Instant,
    rx: oneshot::Receiver<Grouped>,
}

impl Collector {
    pub fn new(settings: GroupSettings, classes: usize, eps: f64) -> Self {
        Collector {
            settings,
            classes,
            eps,
            open: Mutex::new((0, HashMap::new())),
        }
    }

    pub fn enabled(&self) -> bool {
        self.settings.size > 0
    }

    /// Adds a graded completion of `example` to its open group (opening one when none is);
    /// a group that becomes full is normalized and answered at once.
    pub fn join(&self, example: usize, reward: RewardVector) -> Ticket {
        let (tx, rx) = oneshot::channel();
        let mut guard = self.open.lock().expect("groups lock");
        let (next_id, open) = &mut *guard;
        let group = open.entry(example).or_insert_with(|| {
            *next_id += 1;
            Open {
                id: *next_id,
                deadline: Instant::now() + self.settings.window,
                members: Vec::new(),
            }
        });
        group.members.push((reward, tx));
        let ticket = Ticket {
            example,
            id: group.id,
            deadline: group.deadline,
            rx,
        };
        if group.members.len() >= self.settings.size {
            let full = open.remove(&example).expect("just used");
            drop(guard);
            self.answer(full);
        }
        ticket
    }

    /// The reward of a joined completion: when its group is full, or at the group's deadline
    /// with the members that arrived.
    pub async fn wait(&self, mut ticket: Ticket) -> Grouped {
        if let Ok(Ok(g)) = tokio::time::timeout_at(ticket.deadline, &mut ticket.rx).await {
            return g;
        }
        let late = {
            let mut guard = self.open.lock().expect("groups lock");
            let open = &mut guard.1;
            match open.get(&ticket.example) {
                Some(g) if g.id == ticket.id => open.remove(&ticket.example),
                _ => None,
            }
        };
        if let Some(group) = late {
            eprintln!(
                "arlrr serve: warning: a GDPO group of example {} closed after {:.0} s with {} of {} completions",
                ticket.example,
                self.settings.window.as_secs_f64(),
                group.members.len(),
                self.settings.size
            );
            self.answer(group);
        }
        ticket.rx.await.unwrap_or(Grouped {
            reward: None,
            group_size: 0,
        })
    }

    /// Normalizes a group (GDPO over this one group) and sends each member its reward.
    fn answer(&self, group: Open) {
        let (vectors, senders): (Vec<_>, Vec<_>) = group.members.into_iter().unzip();
        let size = vectors.len();
        let groups = vec![vectors.into_iter().map(Some).collect::<Vec<_>>()];
        let rewards = Target::Decoupled
            .advantages(&groups, self.classes, self.eps)
            .advantages
            .remove(0);
        for (tx, reward) in senders.into_iter().zip(rewards) {
            // a member whose request was abandoned is not waiting any more
            let _ = tx.send(Grouped {
                reward,
                group_size: size,
            });
        }
    }
}
