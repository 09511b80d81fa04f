//! `harmony fake-provider`: a provider's fake on loopback, speaking its real wire format, to
//! try the service without a provider account (and for `harmony bench sync`, which runs one in
//! a process of its own).

use std::io::Write;

use anyhow::Context;

/// `harmony fake-provider hubspot`.
pub async fn fake_hubspot(args: &crate::cli::FakeHubSpotArgs) -> anyhow::Result<()> {
    let fake =
        adapters::fakes::hubspot::FakeHubSpot::start_on(args.contacts, args.companies, args.listen)
            .await
            .with_context(|| format!("while listening on {}", args.listen))?;
    if let Some(token) = &args.accept_token {
        fake.auth.accept(token);
    }
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{}", fake.server.base)?;
        stdout.flush()?;
    }
    eprintln!(
        "fake HubSpot: {} contacts, {} companies; OAuth client id {}, secret {}",
        args.contacts,
        args.companies,
        adapters::fakes::hubspot::CLIENT_ID,
        adapters::fakes::hubspot::CLIENT_SECRET
    );
    crate::shutdown_signal().await;
    Ok(())
}
