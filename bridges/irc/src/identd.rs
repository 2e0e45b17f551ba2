//! The ident service (RFC 1413) for the users' connections, where the admin sets `identd`:
//! an IRC server asking who owns one of our connections to it is told that user's IRC user
//! name, so it shows `alice` rather than `~alice`, and networks that want ident let the
//! users in. Only a connection being registered is known, and only to the server it goes
//! to (the asking address must be the connection's peer): anyone else learns nothing.
//! Each question is one line of at most [`MAX_QUESTION`] bytes, read within
//! [`QUESTION_WAIT`]; at most [`MAX_ASKING`] are served at once.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The longest question read (RFC 1413 allows 1,000 characters).
pub const MAX_QUESTION: usize = 1000;

/// How long a question may take to arrive.
pub const QUESTION_WAIT: Duration = Duration::from_secs(10);

/// Questions served at once; more are closed unanswered.
pub const MAX_ASKING: usize = 64;

/// The connections being registered, by our local port and the server's address: the
/// user name each registers with.
#[derive(Debug, Default)]
pub struct Idents {
    known: Mutex<HashMap<(u16, SocketAddr), String>>,
}

/// A connection's place in [`Idents`], taken out when dropped (its registration ended).
#[derive(Debug)]
pub struct Known {
    idents: Arc<Idents>,
    key: (u16, SocketAddr),
}

impl Drop for Known {
    fn drop(&mut self) {
        self.idents.lock().remove(&self.key);
    }
}

/// `address` as the kernel reports its peers: an IPv4 address, not an IPv4-mapped IPv6 one.
fn canonical(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
}

impl Idents {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(u16, SocketAddr), String>> {
        // Nothing panics while holding it; a poisoned map is still a map.
        self.known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Knows the connection from `local` to `server` as `username`'s until the returned
    /// guard is dropped.
    pub fn register(
        self: &Arc<Self>,
        local: SocketAddr,
        server: SocketAddr,
        username: &str,
    ) -> Known {
        let key = (local.port(), canonical(server));
        self.lock().insert(key, username.to_owned());
        Known {
            idents: self.clone(),
            key,
        }
    }

    /// The answer to `question` (`6193, 6667`: our port, then the asker's) from `asker`,
    /// with its CR LF.
    pub fn answer(&self, asker: IpAddr, question: &str) -> String {
        let ports = question.trim().split_once(',').and_then(|(ours, theirs)| {
            let port = |text: &str| text.trim().parse::<u16>().ok().filter(|port| *port > 0);
            Some((port(ours)?, port(theirs)?))
        });
        let Some((ours, theirs)) = ports else {
            return "0, 0 : ERROR : INVALID-PORT\r\n".into();
        };
        let server = SocketAddr::new(asker.to_canonical(), theirs);
        match self.lock().get(&(ours, server)) {
            Some(username) => format!("{ours}, {theirs} : USERID : UNIX : {username}\r\n"),
            None => format!("{ours}, {theirs} : ERROR : NO-USER\r\n"),
        }
    }
}

/// Answers ident questions on `listener` until `shutdown`, counting in `answers` those that
/// named a user.
pub async fn serve(
    listener: TcpListener,
    idents: Arc<Idents>,
    answers: metrics::Counter,
    shutdown: jabbridge_sdk::Shutdown,
) {
    let asking = Arc::new(tokio::sync::Semaphore::new(MAX_ASKING));
    let stopping = shutdown.wait();
    tokio::pin!(stopping);
    loop {
        let accepted = tokio::select! {
            () = &mut stopping => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, asker) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors, say: wait rather than spin.
                tracing::warn!(%error, "identd: cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = asking.clone().try_acquire_owned() else {
            continue;
        };
        let idents = idents.clone();
        let answers = answers.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Ok(Ok(answer)) =
                tokio::time::timeout(QUESTION_WAIT, answer_one(stream, asker.ip(), &idents)).await
            {
                if answer.contains(" : USERID : ") {
                    answers.increment(1);
                }
                tracing::debug!(%asker, answer = answer.trim_end(), "identd: answered");
            }
        });
    }
}

/// Reads one question from `stream` and answers it; the answer.
async fn answer_one(
    mut stream: TcpStream,
    asker: IpAddr,
    idents: &Idents,
) -> std::io::Result<String> {
    let mut question = Vec::with_capacity(64);
    let mut chunk = [0u8; 256];
    loop {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            break;
        }
        question.extend_from_slice(&chunk[..read]);
        if question.contains(&b'\n') || question.len() > MAX_QUESTION {
            break;
        }
    }
    let end = question
        .iter()
        .position(|byte| *byte == b'\n')
        .unwrap_or(question.len())
        .min(MAX_QUESTION);
    let question = String::from_utf8_lossy(&question[..end]);
    let answer = idents.answer(asker, &question);
    stream.write_all(answer.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any question gets one line back, in the RFC's shape, and names nobody unknown.
        #[test]
        fn any_question_gets_one_well_formed_line(question in any::<String>()) {
            let idents = Idents::default();
            let answer = idents.answer("192.0.2.7".parse().unwrap(), &question);
            prop_assert!(answer.ends_with("\r\n"));
            prop_assert_eq!(answer.matches('\n').count(), 1);
            prop_assert!(answer.contains(" : ERROR : "), "{}", answer);
        }
    }

    #[test]
    fn only_the_server_a_registering_connection_goes_to_learns_its_user() {
        let idents = Arc::new(Idents::default());
        let server: SocketAddr = "192.0.2.7:6667".parse().unwrap();
        let known = idents.register("10.0.0.1:40000".parse().unwrap(), server, "alice");
        let asker: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(
            idents.answer(asker, "40000 , 6667\r"),
            "40000, 6667 : USERID : UNIX : alice\r\n"
        );
        // An IPv4-mapped asker is the same asker.
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert!(idents.answer(mapped, "40000,6667").contains("USERID"));
        // Another host, another port, or garbage: nothing said.
        let other: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(
            idents.answer(other, "40000, 6667"),
            "40000, 6667 : ERROR : NO-USER\r\n"
        );
        assert!(idents.answer(asker, "40001, 6667").contains("NO-USER"));
        for garbage in [
            "",
            "40000",
            "a, b",
            "0, 6667",
            "70000, 6667",
            "40000, 6667, 1",
        ] {
            assert_eq!(
                idents.answer(asker, garbage),
                "0, 0 : ERROR : INVALID-PORT\r\n",
                "{garbage:?}"
            );
        }
        // Registered no more: forgotten.
        drop(known);
        assert!(idents.answer(asker, "40000, 6667").contains("NO-USER"));
    }
}
