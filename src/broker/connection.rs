//! Opening AMQP connections. `amqps://` URLs use TLS (rustls with the platform's roots).

use lapin::{Connection, ConnectionProperties};

use super::BrokerError;

/// Connects to `amqp_url`, naming the connection `name` in the management UI.
pub async fn connect(amqp_url: &str, name: &str) -> Result<Connection, BrokerError> {
    let properties = ConnectionProperties::default().with_connection_name(name.to_owned().into());
    Ok(Connection::connect(amqp_url, properties).await?)
}
