//! Unit tests of the pure parts of calls: the machine's transitions, in
//! virtual time, and the bookkeeping under them.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

use confer_sfu::api::Role;

use super::machine::{Machine, Started};
use super::turn::turn_credential;
use super::*;
use crate::error::Code;
use crate::ids::Timestamp;
use crate::messaging::Who;
use std::collections::BTreeMap;
use std::time::Duration;
use std::time::Instant;

/// The credential coturn expects, checked against Python's hmac:
/// `base64(hmac.new(b"north-wind", b"1700086400:4b1e…", sha1))`.
#[test]
fn turn_credentials_follow_coturns_rest_scheme() {
    let user: UserId = "4b1e2f0a-8c3d-4e5f-9a6b-7c8d9e0f1a2b"
        .parse()
        .unwrap_or_else(|_| unreachable!());
    let (name, password) = turn_credential("north-wind", 1_700_086_400, user);
    assert_eq!(name, "1700086400:4b1e2f0a-8c3d-4e5f-9a6b-7c8d9e0f1a2b");
    assert_eq!(password, "vfF0j0IN2HkyTgu+ypB0cRXcsvs=");
    let config = CallConfig {
        turn: Some(crate::config::TurnConfig {
            urls: vec!["turn:turn.example.com:3478".to_owned()],
            secret: "north-wind".to_owned(),
            ttl_secs: 3600,
        }),
        ..CallConfig::default()
    };
    let servers = ice_servers_for(
        &config,
        user,
        Timestamp::from_system(std::time::SystemTime::now()),
    );
    assert_eq!(servers.len(), 1);
    let name = servers[0].username.clone().unwrap_or_default();
    let expiry: u64 = name.split(':').next().unwrap_or("0").parse().unwrap_or(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    assert!((now + 3590..=now + 3610).contains(&expiry), "{name}");
}

#[test]
fn durations_read_well() {
    assert_eq!(human_duration(5_400), "5s");
    assert_eq!(human_duration(65_000), "1m 05s");
    assert_eq!(human_duration(3_725_000), "1h 02m 05s");
}

/// A call of the caller's application, started by its user, with
/// `members` in the given states (joined ones on devices 1, 2, …, in
/// that join order).
fn call_with(members: &[MemberState], topology: Topology) -> (State, CallId, Vec<UserId>) {
    let caller = crate::messaging::caller::test_user();
    let id = CallId::random();
    let mut users: Vec<UserId> = vec![caller.participant()];
    users.extend((1..members.len()).map(|_| UserId::random()));
    let mut state = State::default();
    let mut call = Call {
        id,
        caller,
        conversation_id: ConversationId::random(),
        media: CallMedia::Audio,
        topology,
        started_by: users[0],
        started_at: Timestamp(1_000),
        members: BTreeMap::new(),
        next_seq: 0,
        pair: None,
    };
    for (i, (user, member_state)) in users.iter().zip(members).enumerate() {
        let mut m = Member::new(*member_state, false);
        if *member_state == MemberState::Joined {
            m.device = Some(i as u64 + 1);
            m.joined_seq = i as u64;
            m.ever_joined = true;
            state.joined.insert(*user, id);
        }
        call.members.insert(*user, m);
    }
    state.calls.insert(id, call);
    (state, id, users)
}

fn topology_told(effects: &[Effect]) -> Vec<(UserId, Topology)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Device(user, _, Ephemeral::CallTopology { topology, .. }) => {
                Some((*user, *topology))
            }
            _ => None,
        })
        .collect()
}

fn ended_reason(effects: &[Effect]) -> Option<&'static str> {
    effects.iter().find_map(|e| match e {
        Effect::Ended(ended) => Some(ended.reason),
        _ => None,
    })
}

/// The third person to join moves a peer-to-peer call to the SFU, and
/// every joined device is told.
#[test]
fn the_third_join_moves_the_call_to_the_sfu() {
    let joined = [MemberState::Joined; 3];
    let (mut state, id, users) = call_with(&joined, Topology::P2p);
    let mut out = Vec::new();
    retopology(&mut state, id, &CallConfig::default(), &mut out, None);
    assert_eq!(state.calls[&id].topology, Topology::Sfu);
    let told = topology_told(&out);
    assert_eq!(told.len(), 3);
    assert!(
        told.iter()
            .all(|(u, t)| users.contains(u) && *t == Topology::Sfu)
    );
    // Told once: nothing again while nothing changes.
    let mut again = Vec::new();
    retopology(&mut state, id, &CallConfig::default(), &mut again, None);
    assert!(topology_told(&again).is_empty());
}

/// Two joined devices talk peer-to-peer: the earlier one offers.
#[test]
fn two_joined_devices_pair_up_and_the_first_offers() {
    let members = [MemberState::Joined, MemberState::Joined];
    let (mut state, id, users) = call_with(&members, Topology::P2p);
    let mut out = Vec::new();
    retopology(&mut state, id, &CallConfig::default(), &mut out, None);
    assert_eq!(state.calls[&id].pair, Some((users[0], users[1])));
    let offerer: Vec<(UserId, bool)> = out
        .iter()
        .filter_map(|e| match e {
            Effect::Device(u, _, Ephemeral::CallTopology { offerer, .. }) => {
                Some((*u, offerer.unwrap_or(false)))
            }
            _ => None,
        })
        .collect();
    assert_eq!(offerer, [(users[0], true), (users[1], false)]);
}

/// With `back_to_p2p`, an SFU call down to two goes peer-to-peer again and
/// the remaining SFU sessions end; without it, it stays on the SFU.
#[test]
fn a_departure_down_to_two_returns_to_p2p_only_when_configured() {
    let joined = [MemberState::Joined; 3];
    for back in [false, true] {
        let (mut state, id, users) = call_with(&joined, Topology::Sfu);
        let session = confer_sfu::api::ParticipantId(7);
        if let Some(m) = state
            .calls
            .get_mut(&id)
            .and_then(|c| c.members.get_mut(&users[0]))
        {
            m.publish = Some(session);
            m.told = Some(Topology::Sfu);
        }
        state
            .sessions
            .insert(session, (id, users[0], Role::Publish));
        let config = CallConfig {
            back_to_p2p: back,
            ..CallConfig::default()
        };
        let mut out = Vec::new();
        depart(&mut state, id, users[2], &config, &mut out);
        let call = &state.calls[&id];
        assert_eq!(call.members[&users[2]].state, MemberState::Left);
        if back {
            assert_eq!(call.topology, Topology::P2p);
            assert!(
                out.iter()
                    .any(|e| matches!(e, Effect::SfuLeave(p) if *p == session))
            );
            assert!(state.sessions.is_empty());
            assert_eq!(topology_told(&out).len(), 2);
        } else {
            assert_eq!(call.topology, Topology::Sfu);
            assert!(!state.sessions.is_empty());
        }
        assert_eq!(ended_reason(&out), None);
    }
}

/// How a call ends: completed when someone answered, cancelled when the
/// caller hung up first, missed when the ringing ran out; ringing members
/// of an ended call are recorded as missed, and the room is closed.
#[test]
fn calls_end_with_the_reason_of_their_last_change() {
    // B answered; B leaves: completed.
    let (mut state, id, users) =
        call_with(&[MemberState::Joined, MemberState::Joined], Topology::P2p);
    let mut out = Vec::new();
    depart(&mut state, id, users[1], &CallConfig::default(), &mut out);
    assert_eq!(ended_reason(&out), Some("completed"));
    assert!(state.calls.is_empty() && state.joined.is_empty());
    assert!(out.iter().any(|e| matches!(e, Effect::SfuClose(_))));

    // The caller hangs up while B still rings: cancelled.
    let (mut state, id, users) =
        call_with(&[MemberState::Joined, MemberState::Ringing], Topology::P2p);
    let mut out = Vec::new();
    depart(&mut state, id, users[0], &CallConfig::default(), &mut out);
    assert_eq!(ended_reason(&out), Some("cancelled"));

    // One joined and one still ringing: the call goes on.
    let (mut state, id, users) =
        call_with(&[MemberState::Joined, MemberState::Ringing], Topology::P2p);
    let mut out = Vec::new();
    check_end(&mut state, id, &mut out);
    assert_eq!(ended_reason(&out), None);
    // The ringing runs out: missed.
    if let Some(m) = state
        .calls
        .get_mut(&id)
        .and_then(|c| c.members.get_mut(&users[1]))
    {
        m.state = MemberState::Missed;
    }
    check_end(&mut state, id, &mut out);
    assert_eq!(ended_reason(&out), Some("missed"));

    // Declined.
    let (mut state, id, _) =
        call_with(&[MemberState::Joined, MemberState::Declined], Topology::P2p);
    let mut out = Vec::new();
    check_end(&mut state, id, &mut out);
    assert_eq!(ended_reason(&out), Some("declined"));
}

/// Ringing runs out at its deadline, not before, in virtual time: who
/// still rings has missed the call, which then ends as missed.
#[test]
fn a_ring_expires_at_its_deadline() {
    let (mut state, id, users) =
        call_with(&[MemberState::Joined, MemberState::Ringing], Topology::P2p);
    let t0 = std::time::Instant::now();
    state
        .timers
        .insert((t0 + Duration::from_secs(45), Timer::RingExpiry(id)));
    assert_eq!(poll_timeout(&state), Some(t0 + Duration::from_secs(45)));
    let config = CallConfig::default();
    let mut out = Vec::new();
    handle_timeout(&mut state, t0 + Duration::from_secs(44), &config, &mut out);
    assert!(out.is_empty());
    assert_eq!(
        state.calls[&id].members[&users[1]].state,
        MemberState::Ringing
    );
    handle_timeout(&mut state, t0 + Duration::from_secs(45), &config, &mut out);
    assert_eq!(ended_reason(&out), Some("missed"));
    assert!(state.calls.is_empty());
    assert_eq!(poll_timeout(&state), None);
}

/// A member whose connection dropped leaves when its grace runs out,
/// unless it came back (or dropped again, which starts a new grace).
#[test]
fn a_lost_connection_leaves_only_when_its_grace_runs_out() {
    let config = CallConfig::default();
    let t0 = std::time::Instant::now();
    let grace = t0 + Duration::from_secs(20);
    for came_back in [false, true] {
        let (mut state, id, users) =
            call_with(&[MemberState::Joined, MemberState::Joined], Topology::P2p);
        let b = users[1];
        if let Some(m) = state.calls.get_mut(&id).and_then(|c| c.members.get_mut(&b)) {
            m.device = None;
            m.lost = 1;
        }
        state.timers.insert((
            grace,
            Timer::Grace {
                call: id,
                user: b,
                lost: 1,
            },
        ));
        if came_back && let Some(m) = state.calls.get_mut(&id).and_then(|c| c.members.get_mut(&b)) {
            m.device = Some(9);
        }
        let mut out = Vec::new();
        handle_timeout(&mut state, grace, &config, &mut out);
        if came_back {
            assert!(out.is_empty());
            assert_eq!(state.calls[&id].members[&b].state, MemberState::Joined);
        } else {
            assert_eq!(ended_reason(&out), Some("completed"));
        }
    }
}

// The machine, driven by its inputs alone.

/// A call started through the machine at `t0` by the first of `members`
/// users (on device 1); the others ring.
struct Scene {
    machine: Machine,
    id: CallId,
    conversation: ConversationId,
    callers: Vec<Caller>,
    users: Vec<UserId>,
    t0: Instant,
}

fn as_user(caller: &Caller, id: UserId) -> Caller {
    let mut other = caller.clone();
    if let Who::User { user, .. } = &mut other.who {
        user.id = id;
    }
    other
}

fn effects(machine: &mut Machine) -> Vec<Effect> {
    std::iter::from_fn(|| machine.poll_effect()).collect()
}

fn scene(config: CallConfig, members: usize, busy: &[usize]) -> Scene {
    let first = crate::messaging::caller::test_user();
    let callers: Vec<Caller> = std::iter::once(first.clone())
        .chain((1..members).map(|_| as_user(&first, UserId::random())))
        .collect();
    let users: Vec<UserId> = callers.iter().map(Caller::participant).collect();
    let mut machine = Machine::new(config);
    for &i in busy {
        machine.state.joined.insert(users[i], CallId::random());
    }
    let (id, conversation, t0) = (CallId::random(), ConversationId::random(), Instant::now());
    machine
        .handle_start(&first, users[0], conversation, id)
        .unwrap();
    let started = Started {
        caller: first,
        id,
        conversation_id: conversation,
        media: CallMedia::Audio,
        members: users.clone(),
        device: 1,
        device_key: Some("first".to_owned()),
        started_at: Timestamp(0),
    };
    machine.handle_started(t0, started, Ok(())).unwrap();
    Scene {
        machine,
        id,
        conversation,
        callers,
        users,
        t0,
    }
}

fn member_state(s: &Scene, user: usize) -> Option<MemberState> {
    let call = s.machine.state.calls.get(&s.id)?;
    call.members.get(&s.users[user]).map(|m| m.state)
}

fn code(result: Result<impl std::fmt::Debug, Error>) -> Code {
    result.unwrap_err().code()
}

/// Starting rings the others, says so to every member, and reserves the
/// conversation and the caller; the ringing runs out at its deadline.
#[test]
fn a_start_rings_the_others_until_its_deadline() {
    let mut s = scene(CallConfig::default(), 3, &[]);
    let out = effects(&mut s.machine);
    assert!(matches!(&out[0], Effect::Snapshot(to, _, c) if to.len() == 3 && *c == s.conversation));
    assert_eq!(member_state(&s, 1), Some(MemberState::Ringing));
    assert_eq!(member_state(&s, 2), Some(MemberState::Ringing));
    // Nobody starts a second call in it, nor the caller another call.
    let again = s
        .machine
        .handle_start(&s.callers[1], s.users[1], s.conversation, CallId::random());
    assert_eq!(code(again), Code::CallInProgress);
    let elsewhere = s.machine.handle_start(
        &s.callers[0],
        s.users[0],
        ConversationId::random(),
        CallId::random(),
    );
    assert_eq!(code(elsewhere), Code::Busy);

    let deadline = s.t0 + Duration::from_secs(45);
    assert_eq!(s.machine.poll_timeout(), Some(deadline));
    s.machine
        .handle_timeout(deadline - Duration::from_millis(1));
    assert!(effects(&mut s.machine).is_empty());
    s.machine.handle_timeout(deadline);
    assert_eq!(ended_reason(&effects(&mut s.machine)), Some("missed"));
    assert!(s.machine.state.calls.is_empty() && s.machine.state.joined.is_empty());
}

/// A start whose record failed leaves nothing behind: the caller may
/// start again.
#[test]
fn a_start_that_was_not_recorded_leaves_nothing() {
    let caller = crate::messaging::caller::test_user();
    let me = caller.participant();
    let mut machine = Machine::new(CallConfig::default());
    let (id, conversation) = (CallId::random(), ConversationId::random());
    machine.handle_start(&caller, me, conversation, id).unwrap();
    // While it is recorded, a second start in the conversation waits.
    let other = as_user(&caller, UserId::random());
    let racing = machine.handle_start(&other, other.participant(), conversation, CallId::random());
    assert_eq!(code(racing), Code::CallInProgress);
    let started = Started {
        caller: caller.clone(),
        id,
        conversation_id: conversation,
        media: CallMedia::Video,
        members: vec![me],
        device: 1,
        device_key: None,
        started_at: Timestamp(0),
    };
    let failed = machine.handle_started(
        Instant::now(),
        started,
        Err(Error::Unavailable("disk full".to_owned())),
    );
    assert_eq!(code(failed), Code::Unavailable);
    assert!(machine.state.joined.is_empty() && machine.state.starting.is_empty());
    assert!(effects(&mut machine).is_empty() && machine.poll_timeout().is_none());
    machine
        .handle_start(&caller, me, conversation, CallId::random())
        .unwrap();
}

/// A member in another call is busy at once, which ends a call with
/// nobody else to ring as busy; when the last one ringing declines (or
/// says busy) the call ends, as declined if anyone declined; declining
/// twice is refused.
#[test]
fn busy_and_declined_members_end_a_call_nobody_answered() {
    let mut s = scene(CallConfig::default(), 2, &[1]);
    assert_eq!(ended_reason(&effects(&mut s.machine)), Some("busy"));

    let mut s = scene(CallConfig::default(), 3, &[]);
    s.machine
        .handle_decline(&s.callers[1], s.users[1], s.id, false)
        .unwrap();
    assert_eq!(member_state(&s, 1), Some(MemberState::Declined));
    let twice = s
        .machine
        .handle_decline(&s.callers[1], s.users[1], s.id, false);
    assert_eq!(code(twice), Code::NotRinging);
    assert_eq!(ended_reason(&effects(&mut s.machine)), None);
    s.machine
        .handle_decline(&s.callers[2], s.users[2], s.id, true)
        .unwrap();
    // A decline outweighs a busy.
    assert_eq!(ended_reason(&effects(&mut s.machine)), Some("declined"));
}

/// The second to join pairs the call peer-to-peer; the third moves it to
/// the SFU; down to two again it stays on the SFU unless `back_to_p2p`.
#[test]
fn joins_and_leaves_move_the_call_between_peer_to_peer_and_the_sfu() {
    let mut s = scene(CallConfig::default(), 3, &[]);
    effects(&mut s.machine);
    s.machine.handle_join(s.users[1], 2, s.id, None).unwrap();
    let told = topology_told(&effects(&mut s.machine));
    assert_eq!(told.len(), 2);
    assert!(told.iter().all(|(_, t)| *t == Topology::P2p));
    s.machine.handle_join(s.users[2], 3, s.id, None).unwrap();
    let told = topology_told(&effects(&mut s.machine));
    assert_eq!(told.len(), 3);
    assert!(told.iter().all(|(_, t)| *t == Topology::Sfu));
    s.machine
        .handle_leave(&s.callers[2], s.users[2], 3, s.id)
        .unwrap();
    assert!(topology_told(&effects(&mut s.machine)).is_empty());
    assert_eq!(s.machine.state.calls[&s.id].topology, Topology::Sfu);
}

/// Joining beyond the member limit is refused; a member already in it
/// may join again.
#[test]
fn the_member_limit_refuses_one_more() {
    let config = CallConfig {
        conference_server_based_member_limit: 2,
        ..CallConfig::default()
    };
    let mut s = scene(config, 3, &[]);
    s.machine.handle_join(s.users[1], 2, s.id, None).unwrap();
    let full = s.machine.handle_join(s.users[2], 3, s.id, None);
    assert_eq!(code(full), Code::CallFull);
    s.machine.handle_join(s.users[1], 2, s.id, None).unwrap();
}

/// Joining from another device moves the call there, and the old device
/// is told; the same client back on a new connection (the same device
/// key) resumes without being told it moved.
#[test]
fn another_device_takes_the_call_and_the_same_client_resumes_it() {
    let mut s = scene(CallConfig::default(), 2, &[]);
    s.machine.handle_join(s.users[1], 2, s.id, None).unwrap();
    effects(&mut s.machine);
    s.machine
        .handle_join(s.users[0], 7, s.id, Some("phone".to_owned()))
        .unwrap();
    let out = effects(&mut s.machine);
    assert!(out.iter().any(|e| matches!(
        e,
        Effect::Device(u, 1, Ephemeral::CallMoved { .. }) if *u == s.users[0]
    )));
    // Hanging up from the device the call left is refused.
    let old = s.machine.handle_leave(&s.callers[0], s.users[0], 1, s.id);
    assert_eq!(code(old), Code::NotJoined);
    s.machine
        .handle_join(s.users[0], 8, s.id, Some("phone".to_owned()))
        .unwrap();
    let out = effects(&mut s.machine);
    assert!(
        !out.iter()
            .any(|e| matches!(e, Effect::Device(_, _, Ephemeral::CallMoved { .. })))
    );
    assert_eq!(s.machine.state.calls[&s.id].device(s.users[0]), Some(8));
}

/// A lost connection keeps its place for the grace period: back in time,
/// the member stays; otherwise it leaves when the grace runs out.
#[test]
fn a_lost_connection_resumes_within_its_grace_or_leaves() {
    for back in [true, false] {
        let mut s = scene(CallConfig::default(), 3, &[]);
        s.machine
            .handle_join(s.users[1], 2, s.id, Some("b".to_owned()))
            .unwrap();
        s.machine.handle_join(s.users[2], 3, s.id, None).unwrap();
        effects(&mut s.machine);
        let lost_at = s.t0 + Duration::from_secs(5);
        s.machine.handle_disconnected(lost_at, s.users[1], 2);
        let grace = lost_at + Duration::from_secs(20);
        assert!(s.machine.poll_timeout() <= Some(grace));
        if back {
            s.machine
                .handle_join(s.users[1], 4, s.id, Some("b".to_owned()))
                .unwrap();
        }
        s.machine.handle_timeout(grace);
        let expected = if back {
            MemberState::Joined
        } else {
            MemberState::Left
        };
        assert_eq!(member_state(&s, 1), Some(expected));
    }
}

/// A member removed from the conversation leaves its call: ringing stops
/// for one that rang, and one that was in it departs.
#[test]
fn a_member_removed_from_the_conversation_leaves_its_call() {
    let mut s = scene(CallConfig::default(), 3, &[]);
    s.machine.handle_join(s.users[1], 2, s.id, None).unwrap();
    effects(&mut s.machine);
    s.machine.handle_member_removed(s.conversation, s.users[2]);
    assert_eq!(member_state(&s, 2), None);
    assert_eq!(ended_reason(&effects(&mut s.machine)), None);
    s.machine.handle_member_removed(s.conversation, s.users[1]);
    assert_eq!(ended_reason(&effects(&mut s.machine)), Some("completed"));
    assert!(s.machine.state.joined.is_empty());
}

/// Signals go to the peer's device only, and only peer-to-peer.
#[test]
fn signals_reach_the_peer_device_only() {
    let mut s = scene(CallConfig::default(), 3, &[]);
    s.machine.handle_join(s.users[1], 2, s.id, None).unwrap();
    effects(&mut s.machine);
    let signal = serde_json::json!({"sdp": "v=0"});
    s.machine
        .handle_signal(
            &s.callers[0],
            s.users[0],
            1,
            s.id,
            s.users[1],
            signal.clone(),
        )
        .unwrap();
    let out = effects(&mut s.machine);
    assert!(matches!(
        &out[..],
        [Effect::Device(u, 2, Ephemeral::CallSignal { .. })] if *u == s.users[1]
    ));
    let not_peer = s.machine.handle_signal(
        &s.callers[0],
        s.users[0],
        1,
        s.id,
        s.users[2],
        signal.clone(),
    );
    assert_eq!(code(not_peer), Code::NotFound);
    let wrong_device =
        s.machine
            .handle_signal(&s.callers[0], s.users[0], 9, s.id, s.users[1], signal);
    assert_eq!(code(wrong_device), Code::NotJoined);
}
