//! A linearizability checker: Wing & Gong's search with Lowe's memoization, the
//! algorithm Porcupine uses, over any sequential [`Model`], plus a [`Register`] model.
//!
//! A history is linearizable if its operations can be put in one order that (1) respects
//! real time, (2) is a legal run of the sequential model, and (3) gives every operation
//! the answer it actually got. [`check`] searches for such an order.
//!
//! **Outcomes.** [`Outcome::Failed`] ops did not happen and are left out.
//! [`Outcome::Unknown`] ops (timeouts, lost connections) may have taken effect at any
//! point after their invocation, with any answer, or never: they are kept with no
//! completion time, applied through [`Model::step_unknown`], and need not be placed at
//! all. A history is linearizable once every `Ok` op is placed.
//!
//! **Ties.** Op A precedes op B only if `A.complete < B.invoke`. When A completes at
//! exactly the time B is invoked they count as concurrent (at equal times, calls sort
//! before returns): coarse clocks produce such ties, and reading them as an order could
//! only add false alarms.
//!
//! **The search** ([`check`]). The calls and returns of all ops form one list sorted by
//! time. Starting from the front, the search tries to *linearize* each call it meets
//! before the first return: apply the op to the model state and, if the model accepts the
//! op's answer, take the op out of the list ("lift" it, with its return) and start again
//! from the front. Reaching a return means the op that returns there could not be placed
//! in time, so the search backtracks: it puts the last op back ("unlift") and tries the
//! call after it. Lowe's memoization records every (set of linearized ops, model state)
//! pair reached; reaching one again cannot succeed where the first visit failed, so it is
//! skipped. Sets are hand-written bitsets.
//!
//! **Unknown ops** would make this search exponential: each may or may not be placed at
//! any point, and an old unknown write stays a candidate forever. Four rules, all
//! resting on one observation, keep it polynomial in practice. A node (placed ok ops K,
//! placed unknown ops U, state s) *dominates* any node with the same K and s and more
//! unknown ops placed: every way to finish from the second also finishes from the first,
//! since unknown ops have no deadline and never have to be placed. So:
//!
//! 1. memoization keeps, per (K, s), the sets U reached, and skips a node whose U is a
//!    superset of one of them;
//! 2. placing an unknown op that leaves the state unchanged (an unknown read) is skipped;
//! 3. each node tries its ok ops before its unknown ops, so the nodes that leave unknown
//!    ops out are explored first and prune the ones that place them;
//! 4. after placing an unknown op u at node P, an op that could reach the same state
//!    straight from P is skipped (P tries it too, with u unplaced), and u is not placed at
//!    all if every op that could follow it is skipped or fails that way: an unknown
//!    write nobody read is then never tried. [`Model::is_blind`] lets a model make this
//!    test cheap for ops whose effect does not depend on the state.
//!
//! A 2,000-op register history with 5 processes and ~40 unknown writes checks in well under
//! a second in a debug build, and so does finding that one read in it is wrong. The
//! randomized tests cross-check every verdict against a brute-force search.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::fmt::{Debug, Write as _};
use std::hash::Hash;
use std::time::Duration;

use crate::history::{Millis, Op, Outcome};

/// An op of a model's history.
type ModelOp<M> = Op<<M as Model>::Input, <M as Model>::Output>;

/// A budget that lets a few-thousand-op history with a bad spot be searched exhaustively
/// in seconds, while bounding the time a pathological one can take.
pub const DEFAULT_BUDGET: usize = 10_000_000;

/// A sequential specification: what one operation does to the state, and which answers
/// it may give.
pub trait Model {
    type State: Clone + Eq + Hash + Debug;
    type Input: Debug;
    type Output: Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// Applies `input` to `state`; returns the next state if `output` is a possible
    /// answer, `None` if not.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: &Self::Output,
    ) -> Option<Self::State>;

    /// Every state `input` may lead to from `state` when its answer is unknown (one per
    /// possible answer, duplicates allowed). "It never happened" needs no entry: the
    /// checker may leave an unknown op out anyway.
    fn step_unknown(&self, state: &Self::State, input: &Self::Input) -> Vec<Self::State>;

    /// Whether `input` is *blind*: the states it leads to, and which answers it accepts,
    /// are the same from every state (a register write). Only a hint that lets the
    /// checker skip work; `false`, the default, is always correct.
    fn is_blind(&self, input: &Self::Input) -> bool {
        let _ = input;
        false
    }
}

/// What the checker concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order works. `detail` shows the longest linearizable prefix the search found
    /// and the ops that could not be placed after it.
    NotLinearizable {
        detail: String,
    },
    /// The search gave up: the budget of steps was exhausted.
    Unknown,
}

/// Checks whether `ops` is linearizable with respect to `model`, taking at most `budget`
/// search steps (one step = one look at one list entry).
pub fn check<M: Model>(model: &M, ops: &[Op<M::Input, M::Output>], budget: usize) -> Verdict {
    let indexed: Vec<(usize, &ModelOp<M>)> = ops.iter().enumerate().collect();
    Search::new(model, &indexed).run(budget)
}

/// Checks each part of a history on its own (P-compositionality: a history is
/// linearizable iff the sub-history of every independent object is, e.g. one register
/// per key). `key` names the object an op belongs to. Returns the first
/// non-linearizable part's verdict, its detail prefixed with the key; `Unknown` if no part
/// failed but some ran out of `budget` (which applies to each part separately). Op
/// numbers in the detail are indexes into `ops`.
pub fn check_partitioned<M, K, F>(
    model: &M,
    ops: &[Op<M::Input, M::Output>],
    key: F,
    budget: usize,
) -> Verdict
where
    M: Model,
    K: Ord + Debug,
    F: Fn(&Op<M::Input, M::Output>) -> K,
{
    let mut parts: BTreeMap<K, Vec<(usize, &ModelOp<M>)>> = BTreeMap::new();
    for (index, op) in ops.iter().enumerate() {
        parts.entry(key(op)).or_default().push((index, op));
    }
    let mut gave_up = false;
    for (key, part) in parts {
        match Search::new(model, &part).run(budget) {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable { detail } => {
                return Verdict::NotLinearizable {
                    detail: format!("key {key:?}: {detail}"),
                }
            }
            Verdict::Unknown => gave_up = true,
        }
    }
    if gave_up {
        Verdict::Unknown
    } else {
        Verdict::Linearizable
    }
}

// ---------------------------------------------------------------------------------------
// The register model
// ---------------------------------------------------------------------------------------

/// A single-value register, empty (`None`) at first.
#[derive(Debug, Clone, Copy, Default)]
pub struct Register;

/// What a register client asks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RegisterOp {
    Write(String),
    Read,
}

/// What a register answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RegisterAnswer {
    /// A write was applied.
    Written,
    /// A read's value.
    Value(Option<String>),
}

impl Model for Register {
    type State = Option<String>;
    type Input = RegisterOp;
    type Output = RegisterAnswer;

    fn init(&self) -> Option<String> {
        None
    }

    fn step(
        &self,
        state: &Option<String>,
        input: &RegisterOp,
        output: &RegisterAnswer,
    ) -> Option<Option<String>> {
        match (input, output) {
            (RegisterOp::Write(value), RegisterAnswer::Written) => Some(Some(value.clone())),
            (RegisterOp::Read, RegisterAnswer::Value(value)) if value == state => {
                Some(state.clone())
            }
            _ => None,
        }
    }

    fn step_unknown(&self, state: &Option<String>, input: &RegisterOp) -> Vec<Option<String>> {
        match input {
            RegisterOp::Write(value) => vec![Some(value.clone())],
            RegisterOp::Read => vec![state.clone()],
        }
    }

    fn is_blind(&self, input: &RegisterOp) -> bool {
        matches!(input, RegisterOp::Write(_))
    }
}

// ---------------------------------------------------------------------------------------
// The search
// ---------------------------------------------------------------------------------------

/// A set of small integers, one bit each.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Bitset(Vec<u64>);

impl Bitset {
    fn new(bits: usize) -> Bitset {
        Bitset(vec![0; bits.div_ceil(64)])
    }

    fn set(&mut self, bit: usize) {
        self.0[bit / 64] |= 1 << (bit % 64);
    }

    fn clear(&mut self, bit: usize) {
        self.0[bit / 64] &= !(1 << (bit % 64));
    }

    fn is_subset_of(&self, other: &Bitset) -> bool {
        self.0.iter().zip(&other.0).all(|(a, b)| a & !b == 0)
    }
}

/// No node: the end of the list.
const NIL: usize = usize::MAX;
/// The list's head sentinel.
const HEAD: usize = 0;

/// One node of the event list.
#[derive(Debug, Clone, Copy)]
enum Event {
    Head,
    /// An op's invocation; `ret` is its return node (`None` for an unknown op).
    Call {
        item: usize,
        ret: Option<usize>,
    },
    Return {
        item: usize,
    },
}

/// An op taking part in the search (not Failed).
#[derive(Debug)]
struct Item<'a, I, O> {
    /// Index in the caller's slice, for messages.
    index: usize,
    op: &'a Op<I, O>,
    /// Whether its outcome is `Ok` (it must be linearized) rather than `Unknown`.
    known: bool,
    /// Its bit in the known or the unknown bitset.
    slot: usize,
}

/// A placed op on the backtracking stack.
#[derive(Debug)]
struct Frame<S> {
    /// Its call node.
    node: usize,
    item: usize,
    /// The state before it.
    state: S,
    /// Which of its possible next states was taken.
    alt: usize,
}

#[derive(Debug)]
struct Search<'a, M: Model> {
    model: &'a M,
    items: Vec<Item<'a, M::Input, M::Output>>,
    /// The event nodes, `HEAD` first, then every call and return in time order.
    events: Vec<Event>,
    /// The doubly linked list over `events`; lifted nodes keep their own links so that
    /// they can be put back in LIFO order (dancing links).
    next: Vec<usize>,
    prev: Vec<usize>,
    known_count: usize,
    unknown_count: usize,
    /// How many ops the caller passed that ended Failed.
    failed: usize,
}

impl<'a, M: Model> Search<'a, M> {
    fn new(model: &'a M, ops: &[(usize, &'a ModelOp<M>)]) -> Self {
        let mut items = Vec::new();
        let (mut known_count, mut unknown_count, mut failed) = (0, 0, 0);
        for &(index, op) in ops {
            let known = match op.outcome {
                Outcome::Ok(_) => true,
                Outcome::Unknown(_) => false,
                Outcome::Failed(_) => {
                    failed += 1;
                    continue;
                }
            };
            let counter = if known {
                &mut known_count
            } else {
                &mut unknown_count
            };
            items.push(Item {
                index,
                op,
                known,
                slot: *counter,
            });
            *counter += 1;
        }
        // (time, 0 = call / 1 = return, item): calls before returns at equal times.
        let mut order: Vec<(Duration, u8, usize)> = Vec::with_capacity(2 * items.len());
        for (i, item) in items.iter().enumerate() {
            order.push((item.op.invoke, 0, i));
            if item.known {
                // A completion before the invocation is a recording error; clamp it.
                order.push((item.op.complete.max(item.op.invoke), 1, i));
            }
        }
        order.sort_unstable();
        let mut events = vec![Event::Head];
        let mut call_node = vec![NIL; items.len()];
        for &(_, kind, item) in &order {
            if kind == 0 {
                call_node[item] = events.len();
                events.push(Event::Call { item, ret: None });
            } else {
                let ret = events.len();
                events.push(Event::Return { item });
                if let Some(Event::Call { ret: slot, .. }) = events.get_mut(call_node[item]) {
                    *slot = Some(ret);
                }
            }
        }
        let n = events.len();
        let next = (0..n)
            .map(|i| if i + 1 < n { i + 1 } else { NIL })
            .collect();
        let prev = (0..n).map(|i| i.wrapping_sub(1)).collect();
        Search {
            model,
            items,
            events,
            next,
            prev,
            known_count,
            unknown_count,
            failed,
        }
    }

    fn unlink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        if n != NIL {
            self.prev[n] = node;
        }
    }

    /// Takes a call and its return out of the list.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        if let Event::Call { ret: Some(ret), .. } = self.events[call] {
            self.unlink(ret);
        }
    }

    /// Undoes the matching [`lift`](Self::lift); lifts must be undone in reverse order.
    fn unlift(&mut self, call: usize) {
        if let Event::Call { ret: Some(ret), .. } = self.events[call] {
            self.relink(ret);
        }
        self.relink(call);
    }

    /// The states `item` may lead to from `state`. For an unknown op, results equal to
    /// `state` are dropped: placing it there is dominated by leaving it out.
    fn successors(&self, item: &Item<'_, M::Input, M::Output>, state: &M::State) -> Vec<M::State> {
        match &item.op.outcome {
            Outcome::Ok(output) => self
                .model
                .step(state, &item.op.input, output)
                .into_iter()
                .collect(),
            Outcome::Unknown(_) | Outcome::Failed(_) => self
                .model
                .step_unknown(state, &item.op.input)
                .into_iter()
                .filter(|next| next != state)
                .collect(),
        }
    }

    /// Whether placing `item` from `from` can reach `to`.
    fn can_reach(
        &self,
        item: &Item<'_, M::Input, M::Output>,
        from: &M::State,
        to: &M::State,
    ) -> bool {
        if self.model.is_blind(&item.op.input) {
            // Blind ops reach from every state what they reach from any.
            return true;
        }
        match &item.op.outcome {
            Outcome::Ok(output) => {
                self.model.step(from, &item.op.input, output).as_ref() == Some(to)
            }
            Outcome::Unknown(_) | Outcome::Failed(_) => {
                from == to || self.model.step_unknown(from, &item.op.input).contains(to)
            }
        }
    }

    /// Whether placing `item` now, reaching `next_state`, is dominated by placing it one
    /// step earlier instead. That is so when the current node C was reached by placing
    /// an unknown op u from a node P (so C has P's ok ops and one more unknown op) and
    /// `item` can take P's state to `next_state` as well: P + `item` then has the same ok
    /// ops and state as C + `item` with fewer unknown ops placed, and P tries `item` too
    /// (its candidates are C's), so that node is or will be reached. Without this rule a
    /// chain of unknown writes would be tried in every subset and order.
    fn dominated_by_parent(
        &self,
        stack: &[Frame<M::State>],
        item: &Item<'_, M::Input, M::Output>,
        next_state: &M::State,
    ) -> bool {
        match stack.last() {
            Some(top) if !self.items[top.item].known => {
                self.can_reach(item, &top.state, next_state)
            }
            _ => false,
        }
    }

    /// Whether placing unknown op `u` at the current node (state `state`), reaching
    /// `next`, can lead anywhere. If every candidate that could follow it (the ops called
    /// before the first return, as now) either fails after it or can reach the same state
    /// straight from `state`, then every child of the new node is dominated (see
    /// [`dominated_by_parent`](Self::dominated_by_parent)) and the node cannot succeed,
    /// so it is not worth visiting. This is what keeps old unknown writes that nobody
    /// read from being tried at every dead end.
    fn unknown_placement_matters(&self, u: usize, state: &M::State, next: &M::State) -> bool {
        let mut node = self.next[HEAD];
        while let Some(&Event::Call { item, .. }) = self.events.get(node) {
            node = self.next[node];
            let x = &self.items[item];
            if item == u || self.model.is_blind(&x.op.input) {
                continue;
            }
            let after: Vec<M::State> = match &x.op.outcome {
                Outcome::Ok(output) => self
                    .model
                    .step(next, &x.op.input, output)
                    .into_iter()
                    .collect(),
                Outcome::Unknown(_) | Outcome::Failed(_) => self
                    .model
                    .step_unknown(next, &x.op.input)
                    .into_iter()
                    .filter(|s| s != next)
                    .collect(),
            };
            if after.iter().any(|s| !self.can_reach(x, state, s)) {
                return true;
            }
        }
        false
    }

    fn run(mut self, budget: usize) -> Verdict {
        let mut state = self.model.init();
        let mut known = Bitset::new(self.known_count);
        let mut unknown = Bitset::new(self.unknown_count);
        // (linearized Ok ops, state) -> the sets of linearized unknown ops reached with
        // them, none a superset of another.
        let mut reached: HashMap<(Bitset, M::State), Vec<Bitset>> = HashMap::new();
        reached.insert((known.clone(), state.clone()), vec![unknown.clone()]);
        let mut stack: Vec<Frame<M::State>> = Vec::new();
        let mut known_left = self.known_count;
        let mut best = Best {
            placed_known: 0,
            path: Vec::new(),
            state: state.clone(),
        };

        let mut node = self.next[HEAD];
        // Each node's candidates are tried in two passes over the list: first the ok ops,
        // then (`unknown_pass`) the unknown ones. Trying unknown ops last means the
        // nodes that leave them out are reached first and prune, by dominance, the same
        // nodes reached again with them placed; the other order explores every subset of
        // the pending unknown ops.
        let mut unknown_pass = false;
        let mut first_alt = 0;
        let mut steps = 0usize;
        while known_left > 0 {
            steps += 1;
            if steps > budget {
                return Verdict::Unknown;
            }
            let call = match self.events.get(node) {
                Some(&Event::Call { item, .. }) => Some(item),
                Some(Event::Return { .. } | Event::Head) | None => None,
            };
            let Some(i) = call else {
                // A return (or, defensively, the end): the op returning here was not
                // placed in time, so nothing after it may be placed now.
                if !unknown_pass && self.unknown_count > 0 {
                    unknown_pass = true;
                    node = self.next[HEAD];
                    continue;
                }
                // Undo the last placement and try what follows it.
                let Some(frame) = stack.pop() else {
                    return Verdict::NotLinearizable {
                        detail: self.explain(&best),
                    };
                };
                self.unlift(frame.node);
                let item = &self.items[frame.item];
                if item.known {
                    known.clear(item.slot);
                    known_left += 1;
                } else {
                    unknown.clear(item.slot);
                }
                unknown_pass = !item.known;
                state = frame.state;
                node = frame.node;
                first_alt = frame.alt + 1;
                continue;
            };
            if self.items[i].known == unknown_pass {
                node = self.next[node];
                continue;
            }
            let item = &self.items[i];
            let mut placed = false;
            for (alt, next_state) in self.successors(item, &state).into_iter().enumerate() {
                if alt < first_alt {
                    continue;
                }
                if self.dominated_by_parent(&stack, item, &next_state)
                    || (!item.known && !self.unknown_placement_matters(i, &state, &next_state))
                {
                    continue;
                }
                if item.known {
                    known.set(item.slot);
                } else {
                    unknown.set(item.slot);
                }
                if first_visit(&mut reached, &known, &next_state, &unknown) {
                    stack.push(Frame {
                        node,
                        item: i,
                        state: std::mem::replace(&mut state, next_state),
                        alt,
                    });
                    placed = true;
                    break;
                }
                if item.known {
                    known.clear(item.slot);
                } else {
                    unknown.clear(item.slot);
                }
            }
            first_alt = 0;
            if placed {
                if item.known {
                    known_left -= 1;
                }
                let placed_known = self.known_count - known_left;
                if placed_known > best.placed_known {
                    best = Best {
                        placed_known,
                        path: stack.iter().map(|f| f.item).collect(),
                        state: state.clone(),
                    };
                }
                self.lift(node);
                node = self.next[HEAD];
                unknown_pass = false;
            } else {
                node = self.next[node];
            }
        }
        Verdict::Linearizable
    }

    /// Says how far the search got, for a history that is not linearizable.
    fn explain(&self, best: &Best<M::State>) -> String {
        const PREFIX_SHOWN: usize = 10;
        const CANDIDATES_SHOWN: usize = 10;
        let mut text = String::new();
        let _ = write!(
            text,
            "no linearization of {} ops ({} ok, {} with unknown outcome; {} failed ones left \
             out). Longest linearizable prefix found: {} ops ({} ok)",
            self.items.len(),
            self.known_count,
            self.unknown_count,
            self.failed,
            best.path.len(),
            best.placed_known
        );
        let skipped = best.path.len().saturating_sub(PREFIX_SHOWN);
        if skipped > 0 {
            let _ = write!(text, ", the last {PREFIX_SHOWN} of them");
        }
        text.push(':');
        for &i in &best.path[skipped..] {
            let _ = write!(text, "\n  {}", self.describe(i));
        }
        let _ = write!(text, "\nstate after it: {:?}", best.state);

        // The candidates at that point: unplaced ops called before the first return of
        // an unplaced ok op.
        let mut placed = vec![false; self.items.len()];
        for &i in &best.path {
            placed[i] = true;
        }
        let mut candidates = Vec::new();
        let mut deadline = None;
        let mut pending_unknown = 0;
        for event in &self.events {
            match *event {
                Event::Call { item, .. } if !placed[item] => {
                    if self.items[item].known {
                        candidates.push(item);
                    } else {
                        pending_unknown += 1;
                    }
                }
                Event::Return { item } if !placed[item] => {
                    deadline = Some(item);
                    break;
                }
                _ => {}
            }
        }
        text.push_str("\nno order of the remaining ops works; the ok ops that could come next:");
        for &i in candidates.iter().take(CANDIDATES_SHOWN) {
            let item = &self.items[i];
            let why = if self.successors(item, &best.state).is_empty() {
                format!("impossible in state {:?}", best.state)
            } else {
                "possible here, but nothing works after it".to_owned()
            };
            let _ = write!(text, "\n  {}: {why}", self.describe(i));
        }
        if candidates.len() > CANDIDATES_SHOWN {
            let _ = write!(
                text,
                "\n  ... and {} more",
                candidates.len() - CANDIDATES_SHOWN
            );
        }
        if let Some(i) = deadline {
            let item = &self.items[i];
            let _ = write!(
                text,
                "\nop #{} returned at {}, so it had to be placed before any op invoked later",
                item.index,
                Millis(item.op.complete)
            );
        }
        if pending_unknown > 0 {
            let _ = write!(
                text,
                "\n({pending_unknown} ops with unknown outcome invoked by then were also tried)"
            );
        }
        text
    }

    fn describe(&self, i: usize) -> String {
        let item = &self.items[i];
        let op = item.op;
        match &op.outcome {
            Outcome::Ok(output) => format!(
                "#{} process {}: {:?} -> {:?} [{}, {}]",
                item.index,
                op.process,
                op.input,
                output,
                Millis(op.invoke),
                Millis(op.complete)
            ),
            Outcome::Unknown(why) | Outcome::Failed(why) => format!(
                "#{} process {}: {:?} -> unknown ({why}) [{}, gave up {}]",
                item.index,
                op.process,
                op.input,
                Millis(op.invoke),
                Millis(op.complete)
            ),
        }
    }
}

/// The deepest point the search reached, counted in placed `Ok` ops.
#[derive(Debug)]
struct Best<S> {
    placed_known: usize,
    /// The placed ops, in order (indexes into `Search::items`).
    path: Vec<usize>,
    state: S,
}

/// Records the node (`known`, `state`, `unknown`) and says whether it is new: not reached
/// before and not dominated by a node reached before (same `known` and `state`, a subset
/// of `unknown`).
fn first_visit<S: Clone + Eq + Hash>(
    reached: &mut HashMap<(Bitset, S), Vec<Bitset>>,
    known: &Bitset,
    state: &S,
    unknown: &Bitset,
) -> bool {
    match reached.entry((known.clone(), state.clone())) {
        Entry::Vacant(slot) => {
            slot.insert(vec![unknown.clone()]);
            true
        }
        Entry::Occupied(mut slot) => {
            let sets = slot.get_mut();
            if sets.iter().any(|seen| seen.is_subset_of(unknown)) {
                return false;
            }
            // Those the new node dominates need not be kept.
            sets.retain(|seen| !unknown.is_subset_of(seen));
            sets.push(unknown.clone());
            true
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    type ROp = Op<RegisterOp, RegisterAnswer>;

    const BUDGET: usize = DEFAULT_BUDGET;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn op(
        process: usize,
        at: [u64; 2],
        input: RegisterOp,
        outcome: Outcome<RegisterAnswer>,
    ) -> ROp {
        Op {
            process,
            invoke: ms(at[0]),
            complete: ms(at[1]),
            input,
            outcome,
        }
    }

    fn write(process: usize, at: [u64; 2], value: &str) -> ROp {
        let input = RegisterOp::Write(value.to_owned());
        op(process, at, input, Outcome::Ok(RegisterAnswer::Written))
    }

    fn write_unknown(process: usize, at: [u64; 2], value: &str) -> ROp {
        let input = RegisterOp::Write(value.to_owned());
        op(process, at, input, Outcome::Unknown("timeout".to_owned()))
    }

    fn write_failed(process: usize, at: [u64; 2], value: &str) -> ROp {
        let input = RegisterOp::Write(value.to_owned());
        op(process, at, input, Outcome::Failed("409".to_owned()))
    }

    fn read(process: usize, at: [u64; 2], value: Option<&str>) -> ROp {
        let answer = RegisterAnswer::Value(value.map(str::to_owned));
        op(process, at, RegisterOp::Read, Outcome::Ok(answer))
    }

    fn verdict(ops: &[ROp]) -> Verdict {
        check(&Register, ops, BUDGET)
    }

    fn assert_linearizable(ops: &[ROp]) {
        assert_eq!(verdict(ops), Verdict::Linearizable, "{ops:#?}");
    }

    /// Asserts the history is not linearizable and returns the explanation.
    fn assert_not_linearizable(ops: &[ROp]) -> String {
        match verdict(ops) {
            Verdict::NotLinearizable { detail } => detail,
            other => panic!("expected NotLinearizable, got {other:?} for {ops:#?}"),
        }
    }

    // --- hand-written cases ------------------------------------------------------------

    #[test]
    fn empty_and_sequential_histories_are_linearizable() {
        assert_linearizable(&[]);
        assert_linearizable(&[
            read(0, [0, 1], None),
            write(0, [2, 3], "a"),
            read(1, [4, 5], Some("a")),
            write(1, [6, 7], "b"),
            read(0, [8, 9], Some("b")),
        ]);
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_not_linearizable() {
        let detail = assert_not_linearizable(&[
            write(0, [0, 1], "a"),
            write(0, [2, 3], "b"),
            read(1, [4, 5], Some("a")),
        ]);
        assert!(
            detail.contains("Longest linearizable prefix found: 2 ops"),
            "{detail}"
        );
        assert!(
            detail.contains(
                "#2 process 1: Read -> Value(Some(\"a\")) [4.000ms, 5.000ms]: \
                             impossible in state Some(\"b\")"
            ),
            "{detail}"
        );
        assert!(detail.contains("op #2 returned at 5.000ms"), "{detail}");
    }

    #[test]
    fn a_read_concurrent_with_a_write_may_see_either_value() {
        assert_linearizable(&[write(0, [0, 10], "a"), read(1, [2, 5], None)]);
        assert_linearizable(&[write(0, [0, 10], "a"), read(1, [2, 5], Some("a"))]);
        // Two writes in flight together may land in either order.
        assert_linearizable(&[
            write(0, [0, 10], "a"),
            write(1, [1, 9], "b"),
            read(2, [11, 12], Some("a")),
        ]);
        assert_linearizable(&[
            write(0, [0, 10], "a"),
            write(1, [1, 9], "b"),
            read(2, [11, 12], Some("b")),
        ]);
    }

    #[test]
    fn an_unknown_write_may_take_effect_at_any_time_after_its_invocation() {
        // Seen later, even after the client gave up.
        assert_linearizable(&[write_unknown(0, [0, 1], "a"), read(1, [5, 6], Some("a"))]);
        assert_linearizable(&[
            write_unknown(0, [0, 1], "a"),
            read(1, [2, 3], None),
            read(1, [4, 5], Some("a")),
        ]);
        // Never seen: it may never have happened.
        assert_linearizable(&[
            write_unknown(0, [0, 1], "a"),
            read(1, [5, 6], None),
            read(1, [7, 8], None),
        ]);
        // Overwritten before anyone looked.
        assert_linearizable(&[
            write_unknown(0, [0, 1], "a"),
            write(1, [5, 6], "b"),
            read(1, [7, 8], Some("b")),
        ]);
    }

    #[test]
    fn an_unknown_write_takes_effect_once_and_not_before_it_was_sent() {
        // Seen before it was sent.
        assert_not_linearizable(&[read(1, [0, 1], Some("a")), write_unknown(0, [2, 3], "a")]);
        // Once seen, it stays until overwritten.
        assert_not_linearizable(&[
            write_unknown(0, [0, 1], "a"),
            read(1, [2, 3], Some("a")),
            read(1, [4, 5], None),
        ]);
        // An unknown read constrains nothing.
        let unknown_read = op(
            2,
            [0, 9],
            RegisterOp::Read,
            Outcome::Unknown("lost".to_owned()),
        );
        assert_linearizable(&[
            unknown_read,
            write(0, [1, 2], "a"),
            read(1, [3, 4], Some("a")),
        ]);
    }

    #[test]
    fn a_read_of_a_value_never_written_is_not_linearizable() {
        let detail =
            assert_not_linearizable(&[write(0, [0, 10], "a"), read(1, [1, 2], Some("zzz"))]);
        assert!(detail.contains("Some(\"zzz\")"), "{detail}");
    }

    #[test]
    fn failed_writes_never_took_effect() {
        assert_not_linearizable(&[write_failed(0, [0, 1], "a"), read(1, [2, 3], Some("a"))]);
        assert_linearizable(&[write_failed(0, [0, 1], "a"), read(1, [2, 3], None)]);
    }

    #[test]
    fn reads_must_not_go_back_to_an_old_value() {
        // The write of "b" is in flight during both reads: the first sees it, the second
        // (invoked after the first returned) sees the old value again.
        let detail = assert_not_linearizable(&[
            write(0, [0, 1], "a"),
            write(0, [2, 10], "b"),
            read(1, [3, 4], Some("b")),
            read(2, [5, 6], Some("a")),
        ]);
        assert!(detail.contains("#3 process 2"), "{detail}");
        // Overlapping reads may disagree that way.
        assert_linearizable(&[
            write(0, [0, 1], "a"),
            write(0, [2, 10], "b"),
            read(1, [3, 5], Some("b")),
            read(2, [4, 6], Some("a")),
        ]);
    }

    #[test]
    fn ops_that_touch_in_time_count_as_concurrent() {
        // The read is invoked exactly when the write completes: either order is allowed.
        assert_linearizable(&[write(0, [0, 5], "a"), read(1, [5, 6], None)]);
        assert_not_linearizable(&[write(0, [0, 5], "a"), read(1, [6, 7], None)]);
    }

    #[test]
    fn a_completion_recorded_before_the_invocation_is_clamped() {
        assert_linearizable(&[write(0, [5, 3], "a"), read(1, [6, 7], Some("a"))]);
    }

    #[test]
    fn an_exhausted_budget_gives_unknown() {
        let ops = [write(0, [0, 1], "a"), read(1, [2, 3], Some("a"))];
        assert_eq!(check(&Register, &ops, 1), Verdict::Unknown);
        assert_eq!(check(&Register, &ops, 100), Verdict::Linearizable);
    }

    #[test]
    fn partitioned_checks_each_key_on_its_own() {
        // The op's process stands in for a key here.
        let ops = [
            write(1, [0, 1], "a"),
            write(2, [0, 1], "b"),
            read(1, [2, 3], Some("a")),
            read(2, [2, 3], Some("b")),
        ];
        // As one register this is impossible; as two it is fine.
        assert!(matches!(verdict(&ops), Verdict::NotLinearizable { .. }));
        let by_process = |op: &ROp| op.process;
        assert_eq!(
            check_partitioned(&Register, &ops, by_process, BUDGET),
            Verdict::Linearizable
        );
        let mut bad = ops.to_vec();
        bad.push(read(2, [4, 5], Some("a")));
        match check_partitioned(&Register, &bad, by_process, BUDGET) {
            Verdict::NotLinearizable { detail } => {
                assert!(detail.starts_with("key 2: "), "{detail}");
                // Op numbers refer to the whole history.
                assert!(detail.contains("#4 process 2"), "{detail}");
            }
            other => panic!("expected NotLinearizable, got {other:?}"),
        }
        assert_eq!(
            check_partitioned(&Register, &bad, by_process, 1),
            Verdict::Unknown
        );
    }

    // --- simulated atomic register -----------------------------------------------------

    /// Shape of a simulated run.
    #[derive(Debug, Clone, Copy)]
    struct Workload {
        processes: usize,
        ops: usize,
        /// Percent of writes whose answer is lost (half of them take effect).
        unknown_percent: u32,
        /// Percent of writes refused (they never take effect).
        failed_percent: u32,
    }

    /// A history of an atomic register: every op takes effect at one instant inside
    /// its interval (an unknown write: at any time after its invocation, or never), and
    /// reads answer what the register holds at their instant. So it is linearizable by
    /// construction.
    fn simulate(rng: &mut StdRng, w: Workload) -> Vec<ROp> {
        #[derive(Debug)]
        struct Planned {
            op: ROp,
            /// When it takes effect; `None` for ops that never do.
            at: Option<u64>,
        }
        let mut planned = Vec::new();
        let mut clocks = vec![0u64; w.processes];
        for n in 0..w.ops {
            // The process that is free first issues the next op.
            let process = (0..w.processes).min_by_key(|&p| clocks[p]).unwrap();
            let invoke = clocks[process] + rng.random_range(0..3);
            let complete = invoke + rng.random_range(0..8);
            clocks[process] = complete + 1;
            let at = rng.random_range(invoke..=complete);
            let entry = if rng.random_bool(0.5) {
                let value = format!("v{n}");
                let roll = rng.random_range(0..100);
                if roll < w.unknown_percent {
                    let late = invoke + rng.random_range(0..=3 * (complete - invoke + 1));
                    Planned {
                        op: write_unknown(process, [invoke, complete], &value),
                        at: rng.random_bool(0.5).then_some(late),
                    }
                } else if roll < w.unknown_percent + w.failed_percent {
                    Planned {
                        op: write_failed(process, [invoke, complete], &value),
                        at: None,
                    }
                } else {
                    Planned {
                        op: write(process, [invoke, complete], &value),
                        at: Some(at),
                    }
                }
            } else {
                Planned {
                    op: read(process, [invoke, complete], None),
                    at: Some(at),
                }
            };
            planned.push(entry);
        }
        let mut order: Vec<usize> = (0..planned.len())
            .filter(|&i| planned[i].at.is_some())
            .collect();
        order.sort_by_key(|&i| (planned[i].at, i));
        let mut value: Option<String> = None;
        for i in order {
            match &planned[i].op.input {
                RegisterOp::Write(v) => value = Some(v.clone()),
                RegisterOp::Read => {
                    planned[i].op.outcome = Outcome::Ok(RegisterAnswer::Value(value.clone()));
                }
            }
        }
        planned.into_iter().map(|p| p.op).collect()
    }

    /// Replaces the value of the `pick`-th ok read with one never written.
    fn corrupt_a_read(ops: &mut [ROp], pick: usize) -> Option<usize> {
        let reads: Vec<usize> = (0..ops.len())
            .filter(|&i| ops[i].input == RegisterOp::Read && ops[i].outcome.is_ok())
            .collect();
        let &i = reads.get(pick % reads.len().max(1))?;
        ops[i].outcome = Outcome::Ok(RegisterAnswer::Value(Some("never written".to_owned())));
        Some(i)
    }

    #[test]
    fn simulated_registers_are_linearizable_and_a_corrupted_read_is_caught() {
        let workload = Workload {
            processes: 4,
            ops: 60,
            unknown_percent: 10,
            failed_percent: 5,
        };
        for seed in 0..300 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut ops = simulate(&mut rng, workload);
            assert_eq!(verdict(&ops), Verdict::Linearizable, "seed {seed}");
            let pick = rng.random_range(0..1000);
            let Some(i) = corrupt_a_read(&mut ops, pick) else {
                continue;
            };
            match verdict(&ops) {
                Verdict::NotLinearizable { detail } => {
                    assert!(detail.contains("never written"), "seed {seed}: {detail}");
                    assert!(detail.contains(&format!("#{i} ")), "seed {seed}: {detail}");
                }
                other => panic!("seed {seed}: expected NotLinearizable, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_long_history_with_unknown_writes_checks_quickly() {
        let workload = Workload {
            processes: 5,
            ops: 2_000,
            unknown_percent: 4,
            failed_percent: 2,
        };
        for seed in 0..3 {
            let mut rng = StdRng::seed_from_u64(1_000 + seed);
            let mut ops = simulate(&mut rng, workload);
            assert!(ops.iter().filter(|op| op.outcome.is_unknown()).count() >= 10);
            assert_eq!(verdict(&ops), Verdict::Linearizable, "seed {seed}");
            let opaque = check(&OpaqueRegister, &ops, BUDGET);
            assert_eq!(opaque, Verdict::Linearizable, "seed {seed}");
            // Corrupt a read late in the history, so the search has to exhaust every
            // placement of the unknown writes before it.
            let reads = ops.iter().filter(|op| op.input == RegisterOp::Read).count();
            corrupt_a_read(&mut ops, reads * 9 / 10).unwrap();
            assert!(
                matches!(verdict(&ops), Verdict::NotLinearizable { .. }),
                "seed {seed}"
            );
        }
    }

    // --- cross-check against brute force ------------------------------------------------

    /// Tries every order of the ops that keeps real time (an op may not come before one
    /// that completed before it was invoked; unknown ops never complete) and includes
    /// every ok op, failed ops left out and unknown ops optional, and replays it.
    fn brute_force<M: Model>(model: &M, ops: &[Op<M::Input, M::Output>]) -> bool {
        fn extend<M: Model>(
            model: &M,
            ops: &[&Op<M::Input, M::Output>],
            used: &mut Vec<usize>,
            state: &M::State,
        ) -> bool {
            let ok_left = (0..ops.len()).any(|i| ops[i].outcome.is_ok() && !used.contains(&i));
            if !ok_left {
                return true;
            }
            for next in 0..ops.len() {
                if used.contains(&next) {
                    continue;
                }
                let after_all = used.iter().all(|&before| {
                    !(ops[next].outcome.is_ok() && ops[next].complete < ops[before].invoke)
                });
                if !after_all {
                    continue;
                }
                let states: Vec<M::State> = match &ops[next].outcome {
                    Outcome::Ok(output) => model
                        .step(state, &ops[next].input, output)
                        .into_iter()
                        .collect(),
                    _ => model.step_unknown(state, &ops[next].input),
                };
                for s in states {
                    used.push(next);
                    if extend(model, ops, used, &s) {
                        return true;
                    }
                    used.pop();
                }
            }
            false
        }
        let ops: Vec<&Op<M::Input, M::Output>> =
            ops.iter().filter(|op| !op.outcome.is_failed()).collect();
        extend(model, &ops, &mut Vec::new(), &model.init())
    }

    /// An outcome that is unknown with probability `unknown`, failed with 0.1, else ok.
    fn random_outcome<T>(rng: &mut StdRng, ok: T, unknown: f64) -> Outcome<T> {
        let roll: f64 = rng.random();
        if roll < unknown {
            Outcome::Unknown("timeout".to_owned())
        } else if roll < unknown + 0.1 {
            Outcome::Failed("409".to_owned())
        } else {
            Outcome::Ok(ok)
        }
    }

    /// The register without the [`Model::is_blind`] hint, so that the search takes its
    /// general paths; its verdicts must not differ.
    #[derive(Debug)]
    struct OpaqueRegister;

    impl Model for OpaqueRegister {
        type State = Option<String>;
        type Input = RegisterOp;
        type Output = RegisterAnswer;

        fn init(&self) -> Option<String> {
            None
        }

        fn step(
            &self,
            state: &Option<String>,
            input: &RegisterOp,
            output: &RegisterAnswer,
        ) -> Option<Option<String>> {
            Register.step(state, input, output)
        }

        fn step_unknown(&self, state: &Option<String>, input: &RegisterOp) -> Vec<Option<String>> {
            Register.step_unknown(state, input)
        }
    }

    /// Up to 7 ops on a register with random intervals and random answers from a small
    /// domain, so both verdicts are common; unknown outcomes are common too, half of the
    /// time, to exercise the pruning of unknown ops.
    fn random_register_history(rng: &mut StdRng) -> Vec<ROp> {
        let unknown = if rng.random_bool(0.5) { 0.2 } else { 0.5 };
        let values = ["a", "b"];
        (0..rng.random_range(1..=7))
            .map(|i| {
                let invoke = rng.random_range(0..10);
                let complete = invoke + rng.random_range(0..5);
                let (input, answer) = if rng.random_bool(0.5) {
                    let v = values[rng.random_range(0..2)];
                    (RegisterOp::Write(v.to_owned()), RegisterAnswer::Written)
                } else {
                    let v = [None, Some("a"), Some("b")][rng.random_range(0..3)];
                    (
                        RegisterOp::Read,
                        RegisterAnswer::Value(v.map(str::to_owned)),
                    )
                };
                let outcome = random_outcome(rng, answer, unknown);
                op(i, [invoke, complete], input, outcome)
            })
            .collect()
    }

    #[test]
    fn the_search_agrees_with_brute_force_on_small_register_histories() {
        let (mut yes, mut no) = (0, 0);
        for seed in 0..3_000 {
            let mut rng = StdRng::seed_from_u64(seed);
            let ops = random_register_history(&mut rng);
            let expected = brute_force(&Register, &ops);
            match verdict(&ops) {
                Verdict::Linearizable if expected => yes += 1,
                Verdict::NotLinearizable { .. } if !expected => no += 1,
                other => {
                    panic!("seed {seed}: brute force says {expected}, search {other:?}\n{ops:#?}")
                }
            }
            let opaque = check(&OpaqueRegister, &ops, BUDGET);
            assert_eq!(
                opaque == Verdict::Linearizable,
                expected,
                "seed {seed}: {opaque:?}"
            );
        }
        assert!(yes >= 300 && no >= 300, "{yes} linearizable, {no} not");
    }

    /// A counter that an increment bumps by 1 or 2 (the server's choice), answering the
    /// new value: an unknown increment has two possible next states, exercising the
    /// search's alternatives.
    #[derive(Debug)]
    struct Bump;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum BumpOp {
        Increment,
        Read,
    }

    impl Model for Bump {
        type State = u8;
        type Input = BumpOp;
        type Output = u8;

        fn init(&self) -> u8 {
            0
        }

        fn step(&self, state: &u8, input: &BumpOp, output: &u8) -> Option<u8> {
            match input {
                BumpOp::Increment if *output == state + 1 || *output == state + 2 => Some(*output),
                BumpOp::Read if output == state => Some(*state),
                _ => None,
            }
        }

        fn step_unknown(&self, state: &u8, input: &BumpOp) -> Vec<u8> {
            match input {
                BumpOp::Increment => vec![state + 1, state + 2],
                BumpOp::Read => vec![*state],
            }
        }
    }

    #[test]
    fn the_search_agrees_with_brute_force_on_a_model_with_choices() {
        let (mut yes, mut no) = (0, 0);
        for seed in 0..3_000 {
            let mut rng = StdRng::seed_from_u64(seed);
            let ops: Vec<Op<BumpOp, u8>> = (0..rng.random_range(1..=7))
                .map(|i| {
                    let invoke = rng.random_range(0..10);
                    let complete = invoke + rng.random_range(0..5);
                    let input = if rng.random_bool(0.5) {
                        BumpOp::Increment
                    } else {
                        BumpOp::Read
                    };
                    let answer = rng.random_range(0..6);
                    Op {
                        process: i,
                        invoke: ms(invoke),
                        complete: ms(complete),
                        input,
                        outcome: random_outcome(&mut rng, answer, 0.3),
                    }
                })
                .collect();
            let expected = brute_force(&Bump, &ops);
            match check(&Bump, &ops, BUDGET) {
                Verdict::Linearizable if expected => yes += 1,
                Verdict::NotLinearizable { .. } if !expected => no += 1,
                other => {
                    panic!("seed {seed}: brute force says {expected}, search {other:?}\n{ops:#?}")
                }
            }
        }
        assert!(yes >= 300 && no >= 300, "{yes} linearizable, {no} not");
    }

    #[test]
    fn bitsets_set_clear_and_compare() {
        let mut a = Bitset::new(130);
        assert_eq!(a.0.len(), 3);
        a.set(0);
        a.set(129);
        assert_eq!(a.0, [1, 0, 2]);
        let mut b = a.clone();
        b.set(64);
        assert!(a.is_subset_of(&b) && !b.is_subset_of(&a));
        b.clear(64);
        assert_eq!(a, b);
    }
}
