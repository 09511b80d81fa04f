// The console works without JavaScript; this adds the OAuth popup and live status.
(function () {
  "use strict";

  // Live status: the integration's page follows its events and refreshes its status part.
  var live = document.querySelector("[data-live-integration]");
  if (live && window.EventSource) {
    var id = live.getAttribute("data-live-integration");
    var stream = new EventSource("/console/events?integration=" + encodeURIComponent(id));
    var refresh = function () {
      fetch("/console/integrations/" + id + "/status", { credentials: "same-origin" })
        .then(function (answer) { return answer.ok ? answer.text() : null; })
        .then(function (html) { if (html !== null) { live.innerHTML = html; } });
    };
    // Once the stream is open, every later event arrives on it; what happened between the
    // page being drawn and that moment is caught by one refresh then.
    stream.addEventListener("open", refresh);
    ["SyncRequested", "SyncStarted", "SyncProgressed", "SyncCompleted", "SyncFailed",
     "CredentialsExpired", "CredentialsRefreshed", "Reauthenticated", "Disconnected",
     "ConnectionTested", "MappingChanged"].forEach(function (type) {
      stream.addEventListener(type, refresh);
    });
  }

  // The OAuth popup: opened in the click itself (so browsers allow it), then sent to the
  // provider. The callback page tells this page the outcome; if the provider's opener policy
  // cuts that line, the event stream tells it instead.
  var notice = document.getElementById("oauth-notice");
  var say = function (text) { if (notice) { notice.textContent = text; } };
  var done = false;
  var arrive = function (integration) {
    if (done) { return; }
    done = true;
    window.location = "/console/integrations/" + integration + "?notice=Connected";
  };
  document.querySelectorAll("form[data-oauth]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var popup = window.open("about:blank", "harmony-oauth", "popup,width=520,height=680");
      if (!popup) {
        say("The sign-in window did not open: allow popups for Harmony in your browser and try again.");
        return;
      }
      fetch(form.action, {
        method: "POST",
        body: new URLSearchParams(new FormData(form)),
        headers: { "Accept": "application/json" },
        credentials: "same-origin"
      })
        .then(function (answer) { return answer.json(); })
        .then(function (answer) {
          if (!answer.authorization_url) {
            popup.close();
            say(answer.detail || "The connection could not start.");
            return;
          }
          var go = function () {
            popup.location = answer.authorization_url;
            say("Waiting for the provider: finish in the window that opened.");
          };
          if (!window.EventSource) {
            go();
            return;
          }
          var app = form.getAttribute("data-app");
          var reauth = form.getAttribute("data-integration");
          var events = new EventSource("/console/events?types=IntegrationConnected,Reauthenticated");
          var seen = function (message) {
            var event = JSON.parse(message.data);
            var integration = event.stream.replace("integration-", "");
            if ((reauth && integration === reauth) || (!reauth && event.data.app === app)) {
              events.close();
              arrive(integration);
            }
          };
          events.addEventListener("IntegrationConnected", seen);
          events.addEventListener("Reauthenticated", seen);
          // The stream starts where the log is when it opens: send the popup on only then, so
          // that a provider answering at once cannot finish before the page listens.
          var sent = false;
          events.addEventListener("open", function () {
            if (!sent) {
              sent = true;
              go();
            }
          });
        })
        .catch(function () { popup.close(); say("The connection could not start: try again."); });
    });
  });
  window.addEventListener("message", function (event) {
    if (event.origin !== window.location.origin || !event.data || event.data.type !== "harmony-oauth") {
      return;
    }
    if (event.data.ok) {
      arrive(event.data.integration_id);
    } else {
      say("Not connected: " + event.data.error);
    }
  });
})();
