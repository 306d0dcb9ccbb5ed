//! How `loadgen chat` splits its users into conversations: the mix of
//! kinds (one-to-one, groups of 10, channels of 500) and the sizes it
//! makes of a number of users.

use std::str::FromStr;

/// Weights of conversation kinds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mix {
    /// One-to-one.
    pub direct: f64,
    /// Groups of 10.
    pub group: f64,
    /// Channels of 500.
    pub channel: f64,
    /// The share of the rate spent on reactions instead of messages (0
    /// to 1): a reaction to the newest message its sender has seen in
    /// its conversation.
    pub reactions: f64,
    /// The share of messages sent as replies in the thread of the newest
    /// message their sender has seen (0 to 1).
    pub replies: f64,
}

impl FromStr for Mix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut mix = Self {
            direct: 0.0,
            group: 0.0,
            channel: 0.0,
            reactions: 0.0,
            replies: 0.0,
        };
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected kind=weight"))?;
            let v: f64 = v
                .parse()
                .map_err(|_| format!("{v:?}: not a number"))
                .and_then(|v: f64| {
                    if v >= 0.0 && v.is_finite() {
                        Ok(v)
                    } else {
                        Err(format!("{v}: weights are ≥ 0"))
                    }
                })?;
            match k.trim() {
                "direct" => mix.direct = v,
                "group" => mix.group = v,
                "channel" => mix.channel = v,
                "reactions" if v <= 1.0 => mix.reactions = v,
                "replies" if v <= 1.0 => mix.replies = v,
                "reactions" | "replies" => return Err(format!("{k}={v}: a share from 0 to 1")),
                other => {
                    return Err(format!(
                        "{other:?}: kinds are direct, group, channel (and reactions, replies: shares)"
                    ));
                }
            }
        }
        if mix.direct + mix.group + mix.channel <= 0.0 {
            return Err("at least one weight must be positive".to_owned());
        }
        Ok(mix)
    }
}

/// Sizes of the conversations a list of `n` users is split into.
#[must_use]
pub fn plan(n: usize, mix: Mix) -> Vec<usize> {
    let total = mix.direct + mix.group + mix.channel;
    let mut channel_users = (n as f64 * mix.channel / total) as usize / 500 * 500;
    let mut group_users = (n as f64 * mix.group / total) as usize / 10 * 10;
    if channel_users + group_users > n {
        channel_users = 0;
        group_users = n / 10 * 10;
    }
    let mut sizes = vec![500; channel_users / 500];
    sizes.extend(std::iter::repeat_n(10, group_users / 10));
    let mut rest = n - channel_users - group_users;
    while rest >= 2 {
        sizes.push(2);
        rest -= 2;
    }
    if rest == 1 {
        // The odd one out joins the last conversation.
        match sizes.last_mut() {
            Some(last) => *last += 1,
            None => sizes.push(1),
        }
    }
    sizes
}

/// The kind of a conversation of `size` members in [`plan`] (the odd user
/// out makes one a member larger).
pub fn kind_of(size: usize) -> &'static str {
    match size {
        0..=3 => "direct",
        4..=11 => "group",
        _ => "channel",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_parses_and_plans_whole_conversations() {
        let mix: Mix = "direct=5,group=4,channel=1"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let sizes = plan(10_000, mix);
        assert_eq!(sizes.iter().sum::<usize>(), 10_000);
        assert_eq!(sizes.iter().filter(|s| **s == 500).count(), 2);
        assert_eq!(sizes.iter().filter(|s| **s == 10).count(), 400);
        assert_eq!(sizes.iter().filter(|s| **s == 2).count(), 2_500);
        // Few users: no channel fits; groups and pairs do.
        let small = plan(25, mix);
        assert_eq!(small.iter().sum::<usize>(), 25);
        assert!(small.iter().all(|s| *s <= 10 || *s == 3));
        assert!("direct=x".parse::<Mix>().is_err());
        assert!("video=1".parse::<Mix>().is_err());
        assert!("direct=0".parse::<Mix>().is_err());
        let with: Mix = "group=1,reactions=0.25"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!((with.reactions - 0.25).abs() < f64::EPSILON);
        assert!("group=1,reactions=1.5".parse::<Mix>().is_err());
        let replies: Mix = "group=1,replies=0.5"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!((replies.replies - 0.5).abs() < f64::EPSILON);
    }
}
