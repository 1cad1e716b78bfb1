//! One MQTT client over rumqttc's v5 and v3.1.1 implementations: connection options (TLS, credentials, last
//! will, packet size), a uniform incoming-message type with the v5 response topic / correlation data, and
//! publishing with an optional content type and correlation data (v5 only; v3.1.1 ignores them).

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5 as p5;

use super::config::{MqttConfig, Protocol};
use super::queue::Reply;

/// Something to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub topic: String,
    pub payload: Bytes,
    pub retain: bool,
    pub content_type: Option<&'static str>,
    pub correlation: Option<Bytes>,
}

impl Outgoing {
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Outgoing { topic: topic.into(), payload: payload.into(), retain: false, content_type: None, correlation: None }
    }
    pub fn retained(mut self, retain: bool) -> Self {
        self.retain = retain;
        self
    }
    pub fn content_type(mut self, ct: &'static str) -> Self {
        self.content_type = Some(ct);
        self
    }
    /// Echo a request's correlation data (MQTT v5 request/response).
    pub fn answering(mut self, r: &Reply) -> Self {
        self.correlation = r.correlation.clone();
        self
    }
    pub fn json(topic: impl Into<String>, v: &serde_json::Value) -> Self {
        Outgoing::new(topic, v.to_string()).content_type("application/json")
    }
}

#[derive(Debug, Clone)]
pub struct Incoming {
    pub topic: String,
    pub payload: Bytes,
    pub retain: bool,
    pub reply: Option<Reply>,
    /// Why the v5 response topic the sender gave cannot be answered on (empty, wildcards), if it cannot.
    pub bad_reply: Option<String>,
}

/// A response topic we may publish to: a PUBLISH to an empty topic or one with wildcards is a protocol error that
/// makes the broker drop the connection, so such a request is answered on the camera's error topic instead.
pub fn check_response_topic(t: &str) -> Result<&str, String> {
    if t.is_empty() {
        Err("the MQTT v5 response topic is empty".into())
    } else if t.contains(['+', '#']) {
        Err(format!("the MQTT v5 response topic \"{}\" contains a wildcard ('+' or '#')", super::topics::excerpt(t)))
    } else if t.contains('\0') {
        Err("the MQTT v5 response topic contains a NUL character".into())
    } else {
        Ok(t)
    }
}

/// Why a connection ended or could not be made (`EventLoop::poll`'s error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The network, the broker going away, a protocol error: the next poll reconnects.
    Other,
    /// The broker refused the login (CONNACK "not authorised" or "bad user name or password"): retrying the same
    /// credentials does not help.
    LoginRefused,
    /// MQTT v5: the broker gave our session to another client that connected with the same client id.
    TakenOver,
}

#[derive(Debug, Clone)]
pub struct Lost {
    pub message: String,
    pub why: Why,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn lost5(e: rumqttc::v5::ConnectionError) -> Lost {
    use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode as C, DisconnectReasonCode as D};
    use rumqttc::v5::{ConnectionError as E, StateError as S};
    let why = match &e {
        E::ConnectionRefused(C::NotAuthorized | C::BadUserNamePassword | C::Banned) => Why::LoginRefused,
        E::MqttState(S::ServerDisconnect { reason_code: D::SessionTakenOver, .. }) => Why::TakenOver,
        _ => Why::Other,
    };
    Lost { message: e.to_string(), why }
}

fn lost4(e: rumqttc::ConnectionError) -> Lost {
    use rumqttc::{ConnectReturnCode as C, ConnectionError as E};
    let why = match &e {
        E::ConnectionRefused(C::NotAuthorized | C::BadUserNamePassword) => Why::LoginRefused,
        _ => Why::Other,
    };
    Lost { message: e.to_string(), why }
}

#[derive(Debug)]
pub enum Event {
    /// Connection (re-)established: subscribe and announce again. `session` is true when the broker kept our
    /// session (its subscriptions and the QoS 1/2 messages queued for us while we were away).
    Connected {
        session: bool,
    },
    /// The broker answered a subscription: `granted` unless it refused a filter (e.g. its ACL).
    Subscribed {
        granted: bool,
    },
    Message(Incoming),
    /// The client wrote a publish with this packet id (0: QoS 0), in the order it took them from its queue.
    Sent {
        pkid: u16,
    },
    /// The broker acknowledged the publish with this packet id (PUBACK; PUBREC for QoS 2).
    Acked {
        pkid: u16,
    },
    /// The broker or we closed the connection.
    Disconnected,
    Other,
}

#[derive(Clone)]
pub enum Client {
    V5(rumqttc::v5::AsyncClient),
    V4(rumqttc::AsyncClient),
}

pub enum EventLoop {
    V5(Box<rumqttc::v5::EventLoop>),
    V4(Box<rumqttc::EventLoop>),
}

fn qos4(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

fn qos5(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    match q {
        0 => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        1 => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        _ => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

fn transport(cfg: &MqttConfig) -> Result<rumqttc::Transport> {
    let Some(tls) = &cfg.tls else { return Ok(rumqttc::Transport::Tcp) };
    // rustls needs a process-wide crypto provider; install ring once (an error means one is already installed).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = std::fs::read(&tls.ca).with_context(|| format!("reading the MQTT CA certificate {}", tls.ca.display()))?;
    let client_auth = match (&tls.client_cert, &tls.client_key) {
        (Some(c), Some(k)) => Some((
            std::fs::read(c).with_context(|| format!("reading the MQTT client certificate {}", c.display()))?,
            std::fs::read(k).with_context(|| format!("reading the MQTT client key {}", k.display()))?,
        )),
        (None, None) => None,
        _ => return Err(anyhow!("mqtt.tls: give both client_cert and client_key, or neither")),
    };
    Ok(rumqttc::Transport::tls(ca, client_auth, None))
}

/// Create the client and its event loop. `max_packet` bounds incoming packets; the last will marks us offline.
pub fn connect(cfg: &MqttConfig, client_id: &str, will_topic: &str, max_packet: usize) -> Result<(Client, EventLoop)> {
    connect_with(cfg, client_id, will_topic, max_packet, cfg.session_expiry())
}

/// `connect` with an explicit session expiry (0: a clean session), for helper connections that keep no state.
pub fn connect_with(
    cfg: &MqttConfig,
    client_id: &str,
    will_topic: &str,
    max_packet: usize,
    session_expiry_s: u64,
) -> Result<(Client, EventLoop)> {
    let cfg = &MqttConfig { session_expiry_s: Some(session_expiry_s), ..cfg.clone() };
    let keep_alive = Duration::from_secs(cfg.keep_alive_s.max(5));
    let transport = transport(cfg)?;
    match cfg.protocol {
        Protocol::V5 => {
            let mut o = rumqttc::v5::MqttOptions::new(client_id, &cfg.host, cfg.port);
            o.set_keep_alive(keep_alive);
            o.set_clean_start(session_expiry_s == 0);
            if session_expiry_s > 0 {
                o.set_session_expiry_interval(Some(session_expiry_s.min(u32::MAX as u64) as u32));
            }
            o.set_max_packet_size(Some(max_packet as u32));
            o.set_transport(transport);
            o.set_last_will(p5::LastWill::new(will_topic, "offline", qos5(1), true, None));
            if let Some(u) = &cfg.username {
                o.set_credentials(u, cfg.password.clone().unwrap_or_default());
            }
            let (c, e) = rumqttc::v5::AsyncClient::new(o, 64);
            Ok((Client::V5(c), EventLoop::V5(Box::new(e))))
        }
        Protocol::V311 => {
            let mut o = rumqttc::MqttOptions::new(client_id, &cfg.host, cfg.port);
            o.set_keep_alive(keep_alive);
            // 3.1.1 has no expiry: a kept session lasts until the broker's own limit (persistent_client_expiration)
            o.set_clean_session(session_expiry_s == 0);
            o.set_max_packet_size(max_packet, max_packet);
            o.set_transport(transport);
            o.set_last_will(rumqttc::LastWill::new(will_topic, "offline", qos4(1), true));
            if let Some(u) = &cfg.username {
                o.set_credentials(u, cfg.password.clone().unwrap_or_default());
            }
            let (c, e) = rumqttc::AsyncClient::new(o, 64);
            Ok((Client::V4(c), EventLoop::V4(Box::new(e))))
        }
    }
}

impl EventLoop {
    /// After asking for a disconnect: poll until the broker closes the connection. Reading to the end matters:
    /// a socket closed (the process exiting) with unread data in it is reset, not closed, and the broker may then
    /// drop what it had not read yet — the last messages, the DISCONNECT itself, so that the last will fires.
    pub async fn until_closed(&mut self) {
        while self.poll().await.is_ok() {}
    }

    /// The next event; an Err is a connection problem (the next call reconnects).
    pub async fn poll(&mut self) -> Result<Event, Lost> {
        match self {
            EventLoop::V5(e) => match e.poll().await {
                Ok(rumqttc::v5::Event::Incoming(p5::Packet::ConnAck(a))) => {
                    Ok(Event::Connected { session: a.session_present })
                }
                Ok(rumqttc::v5::Event::Incoming(p5::Packet::SubAck(a))) => Ok(Event::Subscribed {
                    granted: a.return_codes.iter().all(|c| matches!(c, p5::SubscribeReasonCode::Success(_))),
                }),
                Ok(rumqttc::v5::Event::Incoming(p5::Packet::Publish(p))) => {
                    let topic = String::from_utf8_lossy(&p.topic).into_owned();
                    let (mut reply, mut bad_reply) = (None, None);
                    if let Some(pr) = &p.properties {
                        match pr.response_topic.as_deref().map(check_response_topic) {
                            Some(Ok(t)) => {
                                reply = Some(Reply { topic: t.to_string(), correlation: pr.correlation_data.clone() })
                            }
                            Some(Err(why)) => bad_reply = Some(why),
                            None => {}
                        }
                    }
                    Ok(Event::Message(Incoming { topic, payload: p.payload, retain: p.retain, reply, bad_reply }))
                }
                Ok(rumqttc::v5::Event::Incoming(p5::Packet::Disconnect(_))) => Ok(Event::Disconnected),
                Ok(rumqttc::v5::Event::Outgoing(rumqttc::Outgoing::Disconnect)) => Ok(Event::Disconnected),
                Ok(rumqttc::v5::Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => Ok(Event::Sent { pkid }),
                Ok(rumqttc::v5::Event::Incoming(p5::Packet::PubAck(a))) => Ok(Event::Acked { pkid: a.pkid }),
                Ok(rumqttc::v5::Event::Incoming(p5::Packet::PubRec(r))) => Ok(Event::Acked { pkid: r.pkid }),
                Ok(_) => Ok(Event::Other),
                Err(e) => Err(lost5(e)),
            },
            EventLoop::V4(e) => match e.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a))) => {
                    Ok(Event::Connected { session: a.session_present })
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(a))) => Ok(Event::Subscribed {
                    granted: a.return_codes.iter().all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_))),
                }),
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => Ok(Event::Message(Incoming {
                    topic: p.topic,
                    payload: p.payload,
                    retain: p.retain,
                    reply: None,
                    bad_reply: None,
                })),
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Disconnect)) => Ok(Event::Disconnected),
                Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) => Ok(Event::Disconnected),
                Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => Ok(Event::Sent { pkid }),
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(a))) => Ok(Event::Acked { pkid: a.pkid }),
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubRec(r))) => Ok(Event::Acked { pkid: r.pkid }),
                Ok(_) => Ok(Event::Other),
                Err(e) => Err(lost4(e)),
            },
        }
    }
}

/// Why a non-blocking request was not taken.
#[derive(Debug)]
pub enum TryError {
    /// The client's request queue is full: try again later.
    Full,
    /// The request can never be sent (e.g. an invalid topic).
    Invalid(String),
}

impl Client {
    /// Queue a publish without waiting: never blocks the caller, whatever the state of the connection.
    pub fn try_publish(&self, m: &Outgoing, qos: u8) -> Result<(), TryError> {
        let full = |e: &dyn std::fmt::Display| {
            if matches!(m.topic.as_str(), "") || m.topic.contains(['+', '#']) {
                TryError::Invalid(format!("cannot publish to {:?}: {e}", m.topic))
            } else {
                TryError::Full
            }
        };
        match self {
            Client::V5(c) => {
                let props = p5::PublishProperties {
                    content_type: m.content_type.map(str::to_string),
                    correlation_data: m.correlation.clone(),
                    ..Default::default()
                };
                c.try_publish_with_properties(m.topic.clone(), qos5(qos), m.retain, m.payload.clone(), props)
                    .map_err(|e| full(&e))
            }
            Client::V4(c) => {
                c.try_publish(m.topic.clone(), qos4(qos), m.retain, m.payload.clone()).map_err(|e| full(&e))
            }
        }
    }

    pub async fn publish(&self, m: Outgoing, qos: u8) -> Result<()> {
        match self {
            Client::V5(c) => {
                let props = p5::PublishProperties {
                    content_type: m.content_type.map(str::to_string),
                    correlation_data: m.correlation,
                    ..Default::default()
                };
                c.publish_with_properties(m.topic, qos5(qos), m.retain, m.payload, props).await?;
            }
            Client::V4(c) => c.publish(m.topic, qos4(qos), m.retain, m.payload).await?,
        }
        Ok(())
    }

    pub async fn subscribe(&self, filter: &str, qos: u8) -> Result<()> {
        self.subscribe_all(&[filter.to_string()], qos, false).await
    }

    /// Subscribe to every filter in one request. Under MQTT v5, unless `every_time`, retained messages are sent
    /// only for a subscription the session did not have yet, so a reconnect to a kept session does not deliver
    /// retained frames again; `every_time` is for retained state that must be read back on every connect.
    pub async fn subscribe_all(&self, filters: &[String], qos: u8, every_time: bool) -> Result<()> {
        match self {
            Client::V5(c) => {
                let f = filters.iter().map(|t| {
                    let mut f = p5::Filter::new(t.clone(), qos5(qos));
                    f.retain_forward_rule = if every_time {
                        p5::RetainForwardRule::OnEverySubscribe
                    } else {
                        p5::RetainForwardRule::OnNewSubscribe
                    };
                    f
                });
                c.subscribe_many(f).await?
            }
            Client::V4(c) => {
                c.subscribe_many(filters.iter().map(|t| rumqttc::SubscribeFilter::new(t.clone(), qos4(qos)))).await?
            }
        }
        Ok(())
    }

    pub async fn unsubscribe(&self, filter: &str) -> Result<()> {
        match self {
            Client::V5(c) => c.unsubscribe(filter).await?,
            Client::V4(c) => c.unsubscribe(filter).await?,
        }
        Ok(())
    }

    /// Ask for a clean disconnect without waiting (no last will is published).
    pub fn try_disconnect(&self) -> Result<()> {
        match self {
            Client::V5(c) => c.try_disconnect()?,
            Client::V4(c) => c.try_disconnect()?,
        }
        Ok(())
    }

    pub async fn disconnect(&self) -> Result<()> {
        match self {
            Client::V5(c) => c.disconnect().await?,
            Client::V4(c) => c.disconnect().await?,
        }
        Ok(())
    }
}
