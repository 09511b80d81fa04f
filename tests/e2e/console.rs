//! The admin console in a real browser: Debian's Chromium, headless, driven over WebDriver
//! (chromedriver), against the service and the fake providers. Each test saves screenshots
//! under `target/console-screenshots/`.

use std::time::Duration;

use fantoccini::Locator;
use serde_json::json;

use eventstore::waiting::eventually;
use fakes::hubspot::FakeHubSpot;
use fakes::zendesk::FakeZendesk;

use crate::browser::{browser, browser_with};
use crate::helpers::{spawn_app_with, use_fake_hubspot, use_fake_zendesk};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_signs_in_and_connects_an_api_key_app() {
    let zendesk = FakeZendesk::start("acme", "agent@acme.com", "zd-right", 3, 1)
        .await
        .unwrap();
    let base = zendesk.server.base.clone();
    let app = spawn_app_with(|settings| use_fake_zendesk(settings, &base)).await;
    let (_, ada) = app.token("acme", "ada", "admin").await;
    let browser = browser().await;
    // A wrong token is refused in words.
    browser
        .c()
        .goto(&format!("{}/console/sign-in", app.address))
        .await
        .unwrap();
    browser.fill("#token", "hst_nonsense").await;
    browser.click("form button[type=submit]").await;
    assert!(browser
        .text(".error")
        .await
        .contains("unknown or was revoked"));
    browser.sign_in(&app.address, &ada).await;
    browser.screenshot("installed-empty").await;

    browser.click("nav a[href='/console/apps']").await;
    browser.click("a[href='/console/apps/zendesk']").await;
    assert!(browser.text("main").await.contains("Workspace integration"));
    browser.fill("#subdomain", "acme").await;
    browser.fill("#email", "agent@acme.com").await;
    browser.fill("#api_token", "zd-wrong").await;
    browser.click("main form button[type=submit]").await;
    assert!(
        browser
            .text(".error")
            .await
            .contains("Couldn't authenticate you"),
        "the provider's reason"
    );
    browser.fill("#subdomain", "acme").await;
    browser.fill("#email", "agent@acme.com").await;
    browser.fill("#api_token", "zd-right").await;
    browser.click("main form button[type=submit]").await;
    browser.path_becomes("/console/integrations/").await;
    assert_eq!(browser.text(".notice").await, "Connected");
    browser.text_becomes("#status", "connected").await;
    browser.screenshot("zendesk-connected").await;

    // Delete, behind a confirmation that says what goes and what stays.
    browser.click("a[href$='/delete']").await;
    let words = browser.text("main").await;
    assert!(
        words.contains("destroys its stored credentials") && words.contains("history stays"),
        "{words}"
    );
    browser.click("main form button.danger").await;
    browser.path_becomes("/console/installed").await;
    assert_eq!(browser.text(".notice").await, "Deleted");
    assert!(browser
        .text("main")
        .await
        .contains("Nothing is connected yet"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_popup_live_sync_logs_mappings_and_disconnect() {
    let hubspot = FakeHubSpot::start(6, 2).await.unwrap();
    hubspot.add_custom_property("shoe_size");
    let base = hubspot.server.base.clone();
    let app = spawn_app_with(|settings| use_fake_hubspot(settings, &base)).await;
    let (_, ada) = app.token("acme", "ada", "admin").await;
    let browser = browser().await;
    browser.sign_in(&app.address, &ada).await;

    // A blocked popup is explained, with the seed's advice.
    browser
        .c()
        .goto(&format!("{}/console/apps/hubspot", app.address))
        .await
        .unwrap();
    browser
        .c()
        .execute("window.open = function () { return null; };", vec![])
        .await
        .unwrap();
    browser.click("main form button[type=submit]").await;
    browser
        .text_becomes("#oauth-notice", "allow popups for Harmony")
        .await;

    // The popup: it opens, the fake HubSpot consents at once, the callback page tells this
    // page, which goes to the new integration.
    browser.c().refresh().await.unwrap();
    browser.click("main form button[type=submit]").await;
    let detail = browser.path_becomes("/console/integrations/").await;
    browser.text_becomes("#status", "connected").await;
    browser.screenshot("hubspot-connected").await;
    let before_sync = domain::Timestamp::now();

    // A full sync, its status followed live: the page is not reloaded (its marker stays).
    hubspot.faults.slow(Duration::from_millis(400));
    browser.click("form[action$='/sync'] button").await;
    // (The page it leaves is the same page: wait for the one the form leads to.)
    browser.text_becomes(".notice", "Full sync requested").await;
    browser
        .c()
        .execute("window.stillHere = true;", vec![])
        .await
        .unwrap();
    browser.text_becomes("#status", "syncing").await;
    browser.screenshot("hubspot-syncing").await;
    hubspot.faults.slow(Duration::ZERO);
    browser.text_becomes("#last-sync", "completed").await;
    browser.text_becomes("#status", "connected").await;
    let still = browser
        .c()
        .execute("return window.stillHere === true;", vec![])
        .await
        .unwrap();
    assert_eq!(still, json!(true), "the status changed without a reload");

    // The sync logs: the run, and its chart.
    browser.click("a[href$='/sync-logs']").await;
    assert!(browser.text("table").await.contains("completed"));
    browser
        .c()
        .find(Locator::Css("svg.chart rect"))
        .await
        .unwrap();
    browser.screenshot("hubspot-sync-logs").await;

    // A mapping, with the custom field the provider has.
    browser
        .c()
        .goto(&format!("{}{detail}/mappings", app.address))
        .await
        .unwrap();
    browser
        .c()
        .find(Locator::Css(
            "#map-contacts-title option[value='shoe_size']",
        ))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .click("form[action$='/mappings'] button[type=submit]")
        .await;
    browser.text_becomes(".notice", "version 1").await;
    let selected = browser
        .c()
        .execute(
            "return document.getElementById('map-contacts-title').value;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(selected, json!("shoe_size"));
    browser.screenshot("hubspot-mappings").await;

    // The history: verified, and the state as of a moment.
    browser
        .c()
        .goto(&format!("{}{detail}/history", app.address))
        .await
        .unwrap();
    assert!(browser.text("#verification").await.contains("intact"));
    assert!(browser
        .text("ol.timeline")
        .await
        .contains("SyncCompleted by system"));
    // As of a moment before the sync: connected, never synced.
    // (A datetime-local value: UTC, to the millisecond, without the zone.)
    let picked = before_sync.to_string()[..23].to_owned();
    browser
        .c()
        .execute(
            "document.getElementById('as_of').value = arguments[0]; \
             document.getElementById('as_of').form.submit();",
            vec![json!(picked)],
        )
        .await
        .unwrap();
    browser.text_becomes("#last-sync", "never").await;
    assert!(browser
        .text("main")
        .await
        .contains(&format!("At {}", &picked[..19])));
    browser.screenshot("hubspot-history").await;

    // Installed lists it.
    browser.click("nav a[href='/console/installed']").await;
    assert!(browser.text("table").await.contains("HubSpot"));
    browser.screenshot("installed").await;

    // Re-authenticate through the popup, with the line to the opener cut (as a provider's
    // opener policy may): the page learns the outcome from the event stream instead.
    browser
        .c()
        .goto(&format!("{}{detail}", app.address))
        .await
        .unwrap();
    browser
        .c()
        .execute("window.postMessage = function () {};", vec![])
        .await
        .unwrap();
    browser.click("form[action$='/reauth'] button").await;
    eventually(WAIT, "the page learns of the reauth", || async {
        let url = browser.c().current_url().await.ok()?;
        (url.path() == detail && url.query() == Some("notice=Connected")).then_some(())
    })
    .await;

    // Disconnect, behind a confirmation that says what it does and does not remove.
    browser
        .c()
        .goto(&format!("{}{detail}", app.address))
        .await
        .unwrap();
    browser.click("a[href$='/disconnect']").await;
    let words = browser.text("main").await;
    assert!(words.contains("stops future syncs") && words.contains("does not delete any data"));
    browser.click("main form button.danger").await;
    browser.text_becomes("#status", "disconnected").await;
    browser.screenshot("hubspot-disconnected").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_without_the_permission_sees_no_write_buttons_and_is_refused() {
    let zendesk = FakeZendesk::start("acme", "agent@acme.com", "zd-right", 1, 0)
        .await
        .unwrap();
    let base = zendesk.server.base.clone();
    let app = spawn_app_with(|settings| use_fake_zendesk(settings, &base)).await;
    let (_, ada) = app.token("acme", "ada", "admin").await;
    let (_, bob) = app.token("acme", "bob", "member").await;
    let connected: serde_json::Value = app
        .call(
            reqwest::Method::POST,
            "/v1/workspaces/acme/integrations",
            &ada,
            Some(crate::helpers::zendesk_account("zd-right")),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = connected["integration_id"].as_str().unwrap().to_owned();
    let browser = browser().await;
    browser.sign_in(&app.address, &bob).await;
    browser
        .c()
        .goto(&format!("{}/console/integrations/{id}", app.address))
        .await
        .unwrap();
    browser.text_becomes("#status", "connected").await;
    let page = browser.c().source().await.unwrap();
    assert!(
        !page.contains("/sync\"") && !page.contains("/disconnect\""),
        "no write buttons"
    );
    assert!(browser
        .text("main")
        .await
        .contains("You can look but not change it"));
    // At a narrow width the page still reads.
    browser.c().set_window_size(380, 800).await.unwrap();
    browser.screenshot("member-narrow").await;

    // Trying anyway: with the session's CSRF token, the domain's rule refuses it; without
    // it, the form is refused as forged.
    let csrf = browser
        .c()
        .execute(
            "return document.querySelector('input[name=csrf]').value;",
            vec![],
        )
        .await
        .unwrap();
    browser
        .c()
        .execute(
            "const f = document.createElement('form'); f.method = 'post'; \
             f.action = arguments[0]; const i = document.createElement('input'); \
             i.name = 'csrf'; i.value = arguments[1]; f.appendChild(i); \
             document.body.appendChild(f); f.submit();",
            vec![json!(format!("/console/integrations/{id}/sync")), csrf],
        )
        .await
        .unwrap();
    browser
        .text_becomes(".error", "integration permission")
        .await;
    let cookie = browser
        .c()
        .get_named_cookie("harmony_session")
        .await
        .unwrap();
    let forged = reqwest::Client::new()
        .post(format!("{}/console/integrations/{id}/sync", app.address))
        .header("Cookie", format!("harmony_session={}", cookie.value()))
        .form(&[("csrf", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        forged.status(),
        403,
        "a form without the session's CSRF token"
    );
    assert!(forged
        .text()
        .await
        .unwrap()
        .contains("did not come from the console"));
    // The sign-in form has a token of its own too.
    let cross_site = reqwest::Client::new()
        .post(format!("{}/console/sign-in", app.address))
        .form(&[("token", bob.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_javascript_an_oauth_app_connects_in_the_whole_window_and_syncs() {
    let hubspot = FakeHubSpot::start(2, 0).await.unwrap();
    let base = hubspot.server.base.clone();
    let app = spawn_app_with(|settings| use_fake_hubspot(settings, &base)).await;
    let (_, ada) = app.token("acme", "ada", "admin").await;
    let browser = browser_with(false).await;
    browser.sign_in(&app.address, &ada).await;
    browser
        .c()
        .goto(&format!("{}/console/apps/hubspot", app.address))
        .await
        .unwrap();
    // The form posts, the window goes to the provider and comes back to the callback page,
    // which says the outcome and links back.
    browser.click("main form button[type=submit]").await;
    browser.path_becomes("/v1/oauth/callback").await;
    assert!(browser.text("#outcome").await.contains("Connected"));
    browser.click("a[href^='/console/integrations/']").await;
    let detail = browser.path_becomes("/console/integrations/").await;
    browser.click("form[action$='/sync'] button").await;
    browser.path_becomes(&detail).await;
    assert_eq!(browser.text(".notice").await, "Full sync requested");
    browser.screenshot("no-javascript").await;
}

/// The console's Salesforce form, as a browser without JavaScript posts it: every input sent,
/// the optional ones empty.
#[tokio::test]
async fn the_salesforce_form_connects_with_its_optional_fields_left_empty() {
    use fakes::salesforce::{FakeSalesforce, CLIENT_ID, CLIENT_SECRET};
    let salesforce = FakeSalesforce::start(1, 1).await.unwrap();
    let base = salesforce.server.base.clone();
    let authorize = base.join("services/oauth2/authorize").unwrap();
    let expected = authorize.clone();
    let app = spawn_app_with(move |settings| {
        settings.adapters.unavailable.remove("salesforce");
        settings.adapters.oauth.insert(
            "salesforce".into(),
            adapters::oauth::OAuthClient {
                client_id: CLIENT_ID.into(),
                client_secret: secrecy::SecretString::from(CLIENT_SECRET),
                authorize_url: authorize,
                token_url: base.join("services/oauth2/token").unwrap(),
                revocation: None,
                credentials_in_body: false,
                issuer: None,
                extra_authorize_params: Vec::new(),
            },
        );
    })
    .await;
    let (_, ada) = app.token("acme", "ada", "admin").await;
    let browser = crate::helpers::fresh_browser();
    assert_eq!(
        crate::helpers::console_sign_in(&app, &browser, &ada).await,
        303
    );
    let page = browser
        .get(format!("{}/console/apps/salesforce", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The page has exactly the form a browser would post.
    for input in ["instance_url", "client_id", "client_secret"] {
        assert!(page.contains(&format!("name=\"{input}\"")), "{input}");
    }
    let action = page
        .split("<form")
        .find(|form| form.contains("name=\"instance_url\""))
        .and_then(|form| form.split("action=\"").nth(1))
        .and_then(|rest| rest.split('"').next())
        .expect("the connect form's action")
        .to_owned();
    let posted = browser
        .post(format!("{}{action}", app.address))
        .form(&[
            ("csrf", crate::helpers::csrf_of(&page).as_str()),
            ("instance_url", "https://acme.my.salesforce.com"),
            ("client_id", ""),
            ("client_secret", ""),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 303);
    let location = posted.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with(expected.as_str()),
        "the window goes to Salesforce's authorization page, not back with an error: {location}"
    );
}
