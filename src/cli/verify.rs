//! `smeltwatch verify`: checks a captured regulated feed, from a file or live from a broker,
//! against the site's public key and the anchors given.

use anyhow::Context as _;

use super::VerifyArgs;

/// `verify --file` or `verify --broker`: the same verdict either way.
pub(super) async fn verify_command(args: VerifyArgs) -> anyhow::Result<crate::ledger::Report> {
    use crate::audit::{capture, subscribe};
    let anchors = crate::ledger::Anchors {
        after: args.after,
        expect_head: args.expect_head,
    };
    let Some(broker) = args.broker else {
        let file = args.file.context("--file or --broker is required")?;
        return Ok(crate::audit::verify_file_with(&args.key, &file, &anchors)?);
    };
    let key = crate::ledger::load_verifying_key(&args.key)?;
    let url = crate::config::BrokerUrl::parse_or_plain(&broker)
        .map_err(|e| anyhow::anyhow!(e.for_flag("--broker")))?;
    let (host, port, tls) = (url.addr.host, url.addr.port, url.tls);
    let password = match &args.password_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("--password-file {}", f.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
        ),
        None => None,
    };
    let opts = subscribe::CaptureOptions {
        host,
        port,
        tls,
        tls_settings: crate::config::TlsSettings {
            ca_file: args.ca_file,
            ..Default::default()
        },
        credentials: args.username.map(|u| (u, password)),
        topics: args.topic,
        duration: args.duration,
        count: args.count,
    };
    let messages = subscribe::capture(&opts).await?;
    Ok(capture::verify_messages_with(
        &key,
        messages
            .iter()
            .enumerate()
            .map(|(i, m)| (i + 1, m.as_slice())),
        false,
        &anchors,
    ))
}
