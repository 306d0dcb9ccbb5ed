//! Unit tests of the pure parts of calls.

use confer_sfu::api::Role;

use super::turn::turn_credential;
use super::*;
use crate::ids::Timestamp;
use std::time::Duration;

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
    let servers = ice_servers_for(&config, user);
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
