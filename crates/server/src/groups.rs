//! GDPO groups collected across requests.
//!
//! GDPO normalizes each class within a prompt's group of completions. OpenRLHF ≥ 0.9.1 sends one
//! completion per request (`SingleTurnAgentExecutor`: `{"query": [q], "prompts": [p],
//! "labels": [l]}`, the `n_samples_per_prompt` requests of one prompt at about the same time),
//! so a request alone holds no group. With a group size configured, each completion waits for
//! the others of its prompt (same example) until the group is full or the window since the
//! group's first completion has passed; then every member gets its reward from the group's
//! normalization.
//!
//! A member whose request is abandoned (the client hung up, or the request timed out) leaves
//! its group when its request's future is dropped ([`Ticket`]'s `Drop`), so a client's retry
//! of that completion is one member, not two, and the group is not filled by a completion
//! nobody waits for.

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
    /// `(member id, reward vector, where its reward goes)`.
    members: Vec<(u64, RewardVector, oneshot::Sender<Grouped>)>,
}

/// The open groups by example, and the last id given to a group or member.
#[derive(Default)]
struct Groups {
    last_id: u64,
    open: HashMap<usize, Open>,
}

impl Groups {
    fn next_id(&mut self) -> u64 {
        self.last_id += 1;
        self.last_id
    }
}

/// The groups being filled, by example.
pub struct Collector {
    settings: GroupSettings,
    classes: usize,
    eps: f64,
    groups: Mutex<Groups>,
}

/// A completion's place in a group; [`Collector::wait`] gives its reward. Dropped unanswered
/// (its request abandoned), it takes its completion out of the group.
pub struct Ticket<'a> {
    collector: &'a Collector,
    example: usize,
    group: u64,
    member: u64,
    deadline: Instant,
    rx: oneshot::Receiver<Grouped>,
    answered: bool,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.collector.leave(self.example, self.group, self.member);
        }
    }
}

impl Collector {
    pub fn new(settings: GroupSettings, classes: usize, eps: f64) -> Self {
        Collector {
            settings,
            classes,
            eps,
            groups: Mutex::new(Groups::default()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.settings.size > 0
    }

    /// Adds a graded completion of `example` to its open group (opening one when none is);
    /// a group that becomes full is normalized and answered at once.
    pub fn join(&self, example: usize, reward: RewardVector) -> Ticket<'_> {
        let (tx, rx) = oneshot::channel();
        let mut groups = self.groups.lock().expect("groups lock");
        let member = groups.next_id();
        if !groups.open.contains_key(&example) {
            let id = groups.next_id();
            let deadline = Instant::now() + self.settings.window;
            groups.open.insert(
                example,
                Open {
                    id,
                    deadline,
                    members: Vec::new(),
                },
            );
        }
        let group = groups.open.get_mut(&example).expect("just inserted");
        group.members.push((member, reward, tx));
        let ticket = Ticket {
            collector: self,
            example,
            group: group.id,
            member,
            deadline: group.deadline,
            rx,
            answered: false,
        };
        if group.members.len() >= self.settings.size {
            let full = groups.open.remove(&example).expect("just used");
            drop(groups);
            self.answer(full);
        }
        ticket
    }

    /// The reward of a joined completion: when its group is full, or at the group's deadline
    /// with the members that arrived.
    pub async fn wait(&self, mut ticket: Ticket<'_>) -> Grouped {
        if let Ok(Ok(g)) = tokio::time::timeout_at(ticket.deadline, &mut ticket.rx).await {
            ticket.answered = true;
            return g;
        }
        let late = {
            let mut groups = self.groups.lock().expect("groups lock");
            match groups.open.get(&ticket.example) {
                Some(g) if g.id == ticket.group => groups.open.remove(&ticket.example),
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
        let g = (&mut ticket.rx).await.unwrap_or(Grouped {
            reward: None,
            group_size: 0,
        });
        ticket.answered = true;
        g
    }

    /// Takes an abandoned member out of its group, if the group is still open; a group left
    /// empty is closed.
    fn leave(&self, example: usize, group: u64, member: u64) {
        let mut groups = self.groups.lock().expect("groups lock");
        let Some(g) = groups.open.get_mut(&example).filter(|g| g.id == group) else {
            return; // already answered
        };
        g.members.retain(|(m, _, _)| *m != member);
        if g.members.is_empty() {
            groups.open.remove(&example);
        }
    }

    /// Completions waiting in open groups (for tests and metrics).
    pub fn waiting(&self) -> usize {
        let groups = self.groups.lock().expect("groups lock");
        groups.open.values().map(|g| g.members.len()).sum()
    }

    /// Normalizes a group (GDPO over this one group) and sends each member its reward.
    fn answer(&self, group: Open) {
        let (vectors, senders): (Vec<_>, Vec<_>) =
            group.members.into_iter().map(|(_, r, tx)| (r, tx)).unzip();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn reward(x: f64) -> RewardVector {
        RewardVector {
            overall: Some(x),
            classes: vec![Some(x)],
        }
    }

    #[tokio::test]
    async fn an_abandoned_member_leaves_and_its_retry_fills_the_group() {
        let groups = Collector::new(
            GroupSettings {
                size: 3,
                window: Duration::from_secs(60),
            },
            1,
            1e-6,
        );
        let first = groups.join(7, reward(0.0));
        let abandoned = groups.join(7, reward(0.5));
        assert_eq!(groups.waiting(), 2);
        drop(abandoned);
        assert_eq!(groups.waiting(), 1, "the abandoned member stayed");
        let retry = groups.join(7, reward(0.5));
        let last = groups.join(7, reward(1.0));
        assert_eq!(groups.waiting(), 0, "three members fill the group");
        let sizes = [
            groups.wait(first).await,
            groups.wait(retry).await,
            groups.wait(last).await,
        ]
        .map(|g| g.group_size);
        assert_eq!(sizes, [3, 3, 3]);
        // a group whose only member left is gone: the next completion opens a new one
        drop(groups.join(8, reward(0.0)));
        assert_eq!(groups.waiting(), 0);
        assert!(groups.groups.lock().unwrap().open.is_empty());
    }
}
