// The seed's walk ("Connecting Your Tools") through a client generated from Harmony Sync's
// /openapi.json: openapi-typescript writes src/schema.d.ts from the live document, and
// openapi-fetch types every path, parameter, body and answer from it, so a request or a
// reading that the document does not allow does not compile.
//
// Run against `harmony serve --demo` (its fakes answer for the providers):
//   HARMONY_URL=http://127.0.0.1:8080 HARMONY_ADMIN_TOKEN=… HARMONY_MEMBER_TOKEN=… \
//   HARMONY_AUDITOR_TOKEN=… npm run generate && npm run build && npm run walk

import createClient from "openapi-fetch";
import type { components, paths } from "./schema.js";

type Problem = components["schemas"]["ProblemBody"];

function env(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

const base = env("HARMONY_URL").replace(/\/$/, "");
const ws = process.env.HARMONY_WORKSPACE ?? "acme";
const todoistToken = process.env.HARMONY_TODOIST_TOKEN ?? "fake-todoist-token";

function check(condition: boolean, what: string): asserts condition {
  if (!condition) throw new Error(`walk failed: ${what}`);
}

function step(what: string): void {
  console.log(`ok  ${what}`);
}

/** A browser's cookies: an OAuth authorization is bound to the browser that started it. */
class Browser {
  private cookies = new Map<string, string>();

  fetch = async (input: Request | string | URL, init?: RequestInit): Promise<Response> => {
    const request = new Request(input, init);
    if (this.cookies.size > 0) {
      request.headers.set(
        "cookie",
        [...this.cookies].map(([name, value]) => `${name}=${value}`).join("; "),
      );
    }
    const response = await fetch(request, { redirect: "manual" });
    for (const line of response.headers.getSetCookie()) {
      const pair = line.split(";")[0] ?? "";
      const at = pair.indexOf("=");
      if (at > 0) this.cookies.set(pair.slice(0, at), pair.slice(at + 1));
    }
    return response;
  };

  /** The provider's popup: its consent page sends the browser back to Harmony's callback,
   * whose page says the outcome. Answers the integration it connected, and the log position
   * the callback wrote up to. */
  async popup(authorizationUrl: string): Promise<{ id: string; position: number }> {
    const consent = await this.fetch(authorizationUrl);
    const callback = consent.headers.get("location");
    check(callback !== null, `the provider's consent redirects (${consent.status})`);
    const answer = await this.fetch(callback);
    const position = positionOf(answer);
    const page = await answer.text();
    const outcome = /<script type="application\/json" id="harmony-oauth">(.*?)<\/script>/s.exec(page);
    check(outcome?.[1] !== undefined, "the callback page carries its outcome");
    const said = JSON.parse(outcome[1]) as { ok: boolean; integration_id?: string; error?: string };
    check(said.ok && said.integration_id !== undefined, `the callback connected: ${said.error}`);
    return { id: said.integration_id, position };
  }
}

/** How far in the log a write reached (its Harmony-Position): sent back as
 * Harmony-Min-Position, a read then shows that write. */
function positionOf(response: Response): number {
  const position = Number(response.headers.get("harmony-position"));
  check(Number.isSafeInteger(position) && position > 0, "a write answers its log position");
  return position;
}

function client(token: string, browser = new Browser()) {
  return createClient<paths>({
    baseUrl: base,
    headers: { authorization: `Bearer ${token}` },
    fetch: browser.fetch,
  });
}

async function eventually<T>(what: string, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const found = await probe();
    if (found !== undefined) return found;
    if (Date.now() > deadline) throw new Error(`walk failed: ${what} within 30 s`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

const adminBrowser = new Browser();
const admin = client(env("HARMONY_ADMIN_TOKEN"), adminBrowser);
const member = client(env("HARMONY_MEMBER_TOKEN"));
const auditor = client(env("HARMONY_AUDITOR_TOKEN"));
const path = { ws };

// Open Marketplace: it appears inside an organization workspace.
const me = await admin.GET("/v1/me");
check(me.data?.workspace === ws && me.data.role === "admin", "the admin is in the workspace");
step(`signed in as ${me.data.user}, admin of ${me.data.workspace}`);

// Marketplace > Apps: each app says whether it is a workspace or a personal integration and
// what access it needs.
const apps = await admin.GET("/v1/apps");
check(apps.data !== undefined, "Apps answered");
check(apps.data.apps.length === 8, `eight apps, not ${apps.data.apps.length}`);
check(apps.data.apps.every((app) => app.available), "every app is available");
const hubspotApp = apps.data.apps.find((app) => app.id === "hubspot");
check(hubspotApp?.scope === "workspace" && hubspotApp.auth.kind === "oauth2", "HubSpot is a workspace OAuth app");
check(hubspotApp.access.length > 0, "HubSpot says what access it needs");
const todoistApp = apps.data.apps.find((app) => app.id === "todoist");
check(todoistApp?.scope === "personal" && todoistApp.auth.kind === "api_key", "Todoist is personal, with an API key");
step(`Apps: ${apps.data.apps.map((app) => `${app.name} (${app.scope})`).join(", ")}`);

// Follow the connection flow: HubSpot through the provider's popup.
const started = await admin.POST("/v1/workspaces/{ws}/integrations", {
  params: { path },
  body: { app: "hubspot" },
});
check(started.response.status === 200 && started.data !== undefined, "HubSpot's connect starts");
check("authorization_url" in started.data, "an OAuth app answers with its authorization URL");
const { id: hubspot, position: connectedAt } = await adminBrowser.popup(
  started.data.authorization_url,
);
step(`HubSpot connected through the popup: ${hubspot}`);
const integration = { ws, id: hubspot };

// Marketplace > Installed, read as of the connect at least (its read model follows the log).
const installed = await admin.GET("/v1/workspaces/{ws}/integrations", {
  params: { path, header: { "Harmony-Min-Position": connectedAt } },
});
const row = installed.data?.integrations.find((r) => r.integration_id === hubspot);
check(row !== undefined, "Installed lists HubSpot");
check(row.status === "connected" && row.actions.includes("sync"), `HubSpot is connected: ${row.status}`);
step(`Installed: HubSpot ${row.status}, actions ${row.actions.join(", ")}`);

// Test the connection.
const tested = await admin.POST("/v1/workspaces/{ws}/integrations/{id}/test", {
  params: { path: integration },
});
check(tested.data?.ok === true, `the connection test passes: ${tested.data?.answer}`);
step(`tested: ${tested.data.answer}`);

// Trigger a full sync, and review the sync logs.
const sync = await admin.POST("/v1/workspaces/{ws}/integrations/{id}/sync", {
  params: { path: integration },
});
check(sync.response.status === 202 && sync.data !== undefined, "a full sync is requested");
const syncId = sync.data.sync_id;
const run = await eventually("the sync completes", async () => {
  const logs = await admin.GET("/v1/workspaces/{ws}/integrations/{id}/sync-logs", {
    params: { path: integration },
  });
  return logs.data?.runs.find((r) => r.sync_id === syncId && r.status === "completed");
});
check(run.pulled > 0, "the sync pulled records");
step(`sync ${syncId} completed: ${run.pulled} pulled, ${run.created} created`);

// Configure field mappings for a supported CRM.
const mappings = await admin.GET("/v1/workspaces/{ws}/integrations/{id}/mappings", {
  params: { path: integration, query: { object: "contacts" } },
});
check(mappings.data !== undefined, "the mappings answer");
const contacts = mappings.data.objects.find((o) => o.object === "contacts");
check(contacts !== undefined, "contacts are mappable");
const mapped = await admin.PUT("/v1/workspaces/{ws}/integrations/{id}/mappings", {
  params: { path: integration },
  body: {
    object: "contacts",
    expected_version: mappings.data.version,
    fields: [{ harmony_field: "email", provider_field: "email", transform: "lowercase" }],
  },
});
check(mapped.data?.version === mappings.data.version + 1, "the mapping is saved as a new version");
step(`mappings: contacts at version ${mapped.data.version}`);

// Re-authenticate: the same integration, a new grant.
const reauth = await admin.POST("/v1/workspaces/{ws}/integrations/{id}/reauth", {
  params: { path: integration },
  body: {},
});
check(reauth.data !== undefined && "authorization_url" in reauth.data, "reauth answers with a popup");
const again = await adminBrowser.popup(reauth.data.authorization_url);
check(again.id === hubspot, "reauth keeps the integration");
step("re-authenticated");

// A member without the integration permission is refused a workspace integration's write.
const refused = await member.POST("/v1/workspaces/{ws}/integrations/{id}/sync", {
  params: { path: integration },
});
const problem: Problem | undefined = refused.error;
check(refused.response.status === 403 && problem?.code !== undefined, "a member may not sync it");
step(`member refused: ${problem.code}`);

// A personal integration: the member's own Todoist, theirs alone.
const todoist = await member.POST("/v1/workspaces/{ws}/integrations", {
  params: { path },
  body: { app: "todoist", fields: { api_token: todoistToken } },
});
check(todoist.response.status === 201 && todoist.data !== undefined, "the member connects Todoist");
check("integration_id" in todoist.data, "an API-key app connects at once");
const personal = todoist.data.integration_id;
const todoistAt = positionOf(todoist.response);
const memberSees = await member.GET("/v1/workspaces/{ws}/integrations", {
  params: { path, header: { "Harmony-Min-Position": todoistAt } },
});
check(
  memberSees.data?.integrations.some((r) => r.integration_id === personal) === true,
  "the member sees their personal integration",
);
const adminSees = await admin.GET("/v1/workspaces/{ws}/integrations", {
  params: { path, header: { "Harmony-Min-Position": todoistAt } },
});
check(
  adminSees.data?.integrations.every((r) => r.integration_id !== personal) === true,
  "the member's personal integration is not the admin's to see",
);
step(`personal Todoist connected by the member: ${personal}`);

// The auditor: the history, the state as of a moment, and the chain verified.
const history = await auditor.GET("/v1/workspaces/{ws}/integrations/{id}/history", {
  params: { path: integration },
});
check(history.data !== undefined, "the auditor reads the history");
const types = history.data.events.map((e) => e.type);
for (const wanted of ["IntegrationConnected", "SyncCompleted", "MappingChanged", "Reauthenticated"]) {
  check(types.includes(wanted), `the history holds ${wanted}: ${types.join(", ")}`);
}
const connectTime = history.data.events.find((e) => e.type === "IntegrationConnected")?.occurred_at;
check(connectTime !== undefined, "the connect has a time");
const then = await auditor.GET("/v1/workspaces/{ws}/integrations/{id}/state", {
  params: { path: integration, query: { as_of: connectTime } },
});
check(then.data?.installed?.last_sync_at == null, "as of the connect, nothing had synced");
const verified = await auditor.GET("/v1/workspaces/{ws}/integrations/{id}/verify", {
  params: { path: integration },
});
check(verified.data?.intact === true, "the chain verifies");
step(`auditor: ${types.length} events, state as of ${connectTime}, chain intact (${verified.data.events} events)`);

// Disconnect, then delete: future syncs stop, the connection configuration goes, the
// history stays.
const disconnected = await admin.POST("/v1/workspaces/{ws}/integrations/{id}/disconnect", {
  params: { path: integration },
});
check(disconnected.data?.disconnected === true, "HubSpot is disconnected");
const stopped = await admin.POST("/v1/workspaces/{ws}/integrations/{id}/sync", {
  params: { path: integration },
});
check(stopped.response.status === 409, `a disconnected integration does not sync (${stopped.response.status})`);
const deleted = await admin.DELETE("/v1/workspaces/{ws}/integrations/{id}", {
  params: { path: integration },
});
check(deleted.response.status === 204, "HubSpot is deleted");
const afterDelete = await admin.GET("/v1/workspaces/{ws}/integrations", {
  params: { path, header: { "Harmony-Min-Position": positionOf(deleted.response) } },
});
check(
  afterDelete.data?.integrations.every((r) => r.integration_id !== hubspot) === true,
  "Installed no longer lists HubSpot",
);
const after = await auditor.GET("/v1/workspaces/{ws}/integrations/{id}/history", {
  params: { path: integration },
});
check((after.data?.events.length ?? 0) > types.length, "the history stays, with the removal in it");
step("disconnected and deleted; the history stays");

console.log("the walk is complete");
