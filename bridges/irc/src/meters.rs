//! What the IRC bridge counts for `/metrics`, per bridge and server: the users' connections
//! up (`jabbridge_irc_connections`), the lines read and written once registered
//! (`jabbridge_irc_lines_in_total`, `jabbridge_irc_lines_out_total`), the connections lost
//! or refused (`jabbridge_irc_connections_lost_total`), and the ident questions answered
//! (`jabbridge_irc_ident_answers_total`, per bridge). Handles are made once per server, so
//! counting a line is one atomic add.

/// One server's meters.
#[derive(Clone)]
pub struct Meters {
    /// Users' connections registered and served now.
    pub connections: metrics::Gauge,
    /// Lines read from the server, once registered.
    pub lines_in: metrics::Counter,
    /// Lines written to it, once registered.
    pub lines_out: metrics::Counter,
    /// Connections that went down or could not be made.
    pub lost: metrics::Counter,
}

impl std::fmt::Debug for Meters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Meters")
    }
}

impl Meters {
    /// The meters of `network` on the bridge of `domain`.
    pub fn new(domain: &str, network: &str) -> Self {
        let labels = [
            ("bridge", domain.to_owned()),
            ("network", network.to_owned()),
        ];
        Self {
            connections: metrics::gauge!("jabbridge_irc_connections", &labels),
            lines_in: metrics::counter!("jabbridge_irc_lines_in_total", &labels),
            lines_out: metrics::counter!("jabbridge_irc_lines_out_total", &labels),
            lost: metrics::counter!("jabbridge_irc_connections_lost_total", &labels),
        }
    }
}

/// The counter of ident answers that named a user, for the bridge of `domain`.
pub fn ident_answers(domain: &str) -> metrics::Counter {
    metrics::counter!("jabbridge_irc_ident_answers_total", "bridge" => domain.to_owned())
}
