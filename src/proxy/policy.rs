//! The one answer policy (SPEC B2): given an upstream answer and what was already tried, pass it
//! back, refresh the token and replay once, or wait and retry. Both the proxied request path
//! ([`super::Proxy::forward`]) and the calls the proxy makes itself ([`super::own`]) ask it, so
//! they cannot drift apart (a terminal 401 is never replayed, a 401 is replayed at most once).

use http::{HeaderValue, StatusCode};
use std::time::{Duration, SystemTime};

/// GET/HEAD retries after 429, at most; each waits what Shoptet asked (bounded by max_retry_wait).
pub const MAX_429_RETRIES: u32 = 3;
/// Wait after a 429 without `Retry-After` (the per-token concurrency limit), doubled per retry.
const CONCURRENCY_429_BACKOFF: Duration = Duration::from_millis(200);
/// Shoptet's answer to a suspended installation: a 401 that no new token will fix.
const NOT_APPROVED: &str = "Addon installation is not approved.";

/// Why an upstream 401 came back, read from its envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// `expired-token` / `invalid-token`: a new token may succeed.
    Token,
    /// Suspended installation, missing header or anything unrecognised: pass it on.
    Terminal,
}

/// What the policy needs to know about an upstream answer.
pub enum Answer<'a> {
    /// A 401, its envelope classified (an envelope too large to read is `Terminal`).
    Unauthorized(Rejection),
    /// A 429 and its `Retry-After`, if any.
    TooManyRequests {
        retry_after: Option<&'a HeaderValue>,
    },
    /// Anything else.
    Other(StatusCode),
}

/// What was already tried for this request, and what it allows.
#[derive(Debug, Default, Clone, Copy)]
pub struct Attempt {
    /// The request body can be sent again (buffered, or empty).
    pub resendable: bool,
    /// GET or HEAD: safe to send again after a 429.
    pub idempotent: bool,
    /// Already replayed once after a 401.
    pub replayed: bool,
    /// 429 retries made so far.
    pub retries_429: u32,
}

/// The policy's verdict.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Hand the answer to the caller, for this reason.
    PassBack(Reason),
    /// Get a token minted for this rejection and send the identical request once more.
    RefreshAndReplay,
    /// Wait this long, then send the identical request again.
    WaitAndRetry(Duration),
}

/// Why an answer is passed back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Neither a 401 nor a 429: Shoptet's verdict stands.
    Final,
    /// A 401 no new token fixes (suspended, missing token, unrecognised).
    TerminalRejection,
    /// A token rejection of a request whose body was streamed and cannot be sent again.
    NotReplayable,
    /// A token rejection of the replay itself.
    RejectedAgain,
    /// A 429 of a request that is not GET/HEAD: it may have been counted, never resent.
    NotIdempotent,
    /// A 429 of a GET/HEAD whose streamed body could not be kept for a resend.
    BodyNotKept,
    /// A 429 asking to wait longer than `max_retry_wait` (or for an unreadable time).
    WaitTooLong,
    /// A 429 after [`MAX_429_RETRIES`] retries.
    RetriesExhausted,
}

impl Reason {
    /// The `outcome` label of `shoptet_proxy_replays_total` for a passed-back token rejection.
    pub fn replay_label(self) -> Option<&'static str> {
        match self {
            Reason::RejectedAgain => Some("rejected_again"),
            Reason::NotReplayable => Some("not_replayable"),
            _ => None,
        }
    }
}

/// Decides what to do with `answer` to a request in state `attempt`.
pub fn decide(answer: &Answer<'_>, attempt: &Attempt, max_retry_wait: Duration) -> Decision {
    match answer {
        Answer::Other(_) => Decision::PassBack(Reason::Final),
        Answer::Unauthorized(Rejection::Terminal) => Decision::PassBack(Reason::TerminalRejection),
        Answer::Unauthorized(Rejection::Token) if attempt.replayed => {
            Decision::PassBack(Reason::RejectedAgain)
        }
        Answer::Unauthorized(Rejection::Token) if !attempt.resendable => {
            Decision::PassBack(Reason::NotReplayable)
        }
        Answer::Unauthorized(Rejection::Token) => Decision::RefreshAndReplay,
        Answer::TooManyRequests { .. } if !attempt.idempotent => {
            Decision::PassBack(Reason::NotIdempotent)
        }
        Answer::TooManyRequests { .. } if !attempt.resendable => {
            Decision::PassBack(Reason::BodyNotKept)
        }
        Answer::TooManyRequests { .. } if attempt.retries_429 >= MAX_429_RETRIES => {
            Decision::PassBack(Reason::RetriesExhausted)
        }
        Answer::TooManyRequests { retry_after } => {
            let wait = match retry_after {
                Some(v) => parse_retry_after(v.as_bytes(), SystemTime::now()),
                None => Some(CONCURRENCY_429_BACKOFF * 2u32.pow(attempt.retries_429)),
            };
            match wait {
                Some(w) if w <= max_retry_wait => Decision::WaitAndRetry(w),
                _ => Decision::PassBack(Reason::WaitTooLong),
            }
        }
    }
}

/// Classifies a 401 body by Shoptet's error envelope.
pub fn classify_401(body: &[u8]) -> Rejection {
    #[derive(serde::Deserialize)]
    struct Envelope {
        errors: Option<Vec<Item>>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Item {
        error_code: Option<String>,
        message: Option<String>,
    }
    let Ok(env) = serde_json::from_slice::<Envelope>(body) else {
        return Rejection::Terminal;
    };
    let items = env.errors.unwrap_or_default();
    let retriable = items.iter().any(|i| {
        matches!(
            i.error_code.as_deref(),
            Some("expired-token" | "invalid-token")
        ) && i.message.as_deref() != Some(NOT_APPROVED)
    });
    let terminal = items
        .iter()
        .any(|i| i.message.as_deref() == Some(NOT_APPROVED));
    if retriable && !terminal {
        Rejection::Token
    } else {
        Rejection::Terminal
    }
}

/// `Retry-After` as seconds or HTTP-date, as a wait from now.
pub fn parse_retry_after(value: &[u8], now: SystemTime) -> Option<Duration> {
    let s = std::str::from_utf8(value).ok()?.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(s).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    fn get() -> Attempt {
        Attempt {
            resendable: true,
            idempotent: true,
            ..Attempt::default()
        }
    }

    #[test]
    fn a_token_rejection_is_replayed_once_and_only_with_a_kept_body() {
        let token = Answer::Unauthorized(Rejection::Token);
        assert_eq!(decide(&token, &get(), WAIT), Decision::RefreshAndReplay);
        let replayed = Attempt {
            replayed: true,
            ..get()
        };
        assert_eq!(
            decide(&token, &replayed, WAIT),
            Decision::PassBack(Reason::RejectedAgain)
        );
        let streamed = Attempt {
            resendable: false,
            ..get()
        };
        assert_eq!(
            decide(&token, &streamed, WAIT),
            Decision::PassBack(Reason::NotReplayable)
        );
        assert_eq!(
            decide(&Answer::Unauthorized(Rejection::Terminal), &get(), WAIT),
            Decision::PassBack(Reason::TerminalRejection)
        );
    }

    #[test]
    fn a_429_is_retried_only_for_a_resendable_get_within_the_wait_and_count() {
        let three = HeaderValue::from_static("3");
        let asked = Answer::TooManyRequests {
            retry_after: Some(&three),
        };
        assert_eq!(
            decide(&asked, &get(), WAIT),
            Decision::WaitAndRetry(Duration::from_secs(3))
        );
        assert_eq!(
            decide(&asked, &get(), Duration::from_secs(2)),
            Decision::PassBack(Reason::WaitTooLong)
        );
        let post = Attempt {
            idempotent: false,
            ..get()
        };
        assert_eq!(
            decide(&asked, &post, WAIT),
            Decision::PassBack(Reason::NotIdempotent)
        );
        let streamed = Attempt {
            resendable: false,
            ..get()
        };
        assert_eq!(
            decide(&asked, &streamed, WAIT),
            Decision::PassBack(Reason::BodyNotKept)
        );
        let spent = Attempt {
            retries_429: MAX_429_RETRIES,
            ..get()
        };
        assert_eq!(
            decide(&asked, &spent, WAIT),
            Decision::PassBack(Reason::RetriesExhausted)
        );
        let second = Attempt {
            retries_429: 1,
            ..get()
        };
        assert_eq!(
            decide(
                &Answer::TooManyRequests { retry_after: None },
                &second,
                WAIT
            ),
            Decision::WaitAndRetry(Duration::from_millis(400))
        );
        assert_eq!(
            decide(&Answer::Other(StatusCode::OK), &get(), WAIT),
            Decision::PassBack(Reason::Final)
        );
    }

    #[test]
    fn expired_and_invalid_tokens_are_replayable() {
        let expired = br#"{"data":null,"errors":[{"errorCode":"expired-token","message":"Token is expired. Please ask for new one.","instance":"unknown"}],"metadata":{"requestId":"x"}}"#;
        let invalid = br#"{"data":null,"errors":[{"errorCode":"invalid-token","message":"Invalid access token.","instance":"x"}]}"#;
        assert_eq!(classify_401(expired), Rejection::Token);
        assert_eq!(classify_401(invalid), Rejection::Token);
    }

    #[test]
    fn not_approved_missing_and_garbage_are_terminal() {
        let not_approved = br#"{"data":null,"errors":[{"errorCode":"invalid-token","message":"Addon installation is not approved.","instance":"x"}]}"#;
        let missing = br#"{"data":null,"errors":[{"errorCode":"missing-access-token","message":"Missing access token.","instance":"x"}]}"#;
        assert_eq!(classify_401(not_approved), Rejection::Terminal);
        assert_eq!(classify_401(missing), Rejection::Terminal);
        assert_eq!(classify_401(b"<html>401</html>"), Rejection::Terminal);
        assert_eq!(classify_401(b""), Rejection::Terminal);
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_719_835_260);
        assert_eq!(parse_retry_after(b"3", now), Some(Duration::from_secs(3)));
        // Mon, 01 Jul 2024 12:01:11 GMT is 11 s after `now`.
        assert_eq!(
            parse_retry_after(b"Mon, 01 Jul 2024 12:01:11 GMT", now),
            Some(Duration::from_secs(11))
        );
        assert_eq!(
            parse_retry_after(b"Mon, 01 Jul 2024 11:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after(b"soon", now), None);
        assert_eq!(parse_retry_after(b"\xff", now), None);
    }
}
