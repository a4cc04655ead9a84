// Drives a hub's /build with BinderHub's own JavaScript client
// (@jupyterhub/binderhub-client from the npm registry, unmodified), the way
// BinderHub's page and jupyterhub-fancy-profiles use it. Prints one JSON
// object per line: each event the client yields, then {"done": ...} with
// what the client would open.
//
// node drive.mjs '{"endpoint": "http://127.0.0.1:PORT/services/environments/build/",
//                  "spec": "git/.../main", "apiToken": "...", "buildOnly": false,
//                  "query": "labpath=x.ipynb", "reconnectAfter": "building"}'

// The client is written for browsers: give it the two globals it touches.
globalThis.window = globalThis;
globalThis.document = {
  hidden: false,
  cookie: "",
  addEventListener() {},
  removeEventListener() {},
};

const { BinderRepository } = await import("@jupyterhub/binderhub-client/client.js");
const { LaunchSpec } = await import("@jupyterhub/binderhub-client/spec.js");

// After close(), a message already on its way makes the client throw
// EventStreamClose from a callback nobody awaits. A browser logs that and
// carries on; node would end the process, so do what the browser does.
process.on("unhandledRejection", (err) => {
  // the client's class doesn't set .name (it stays "Error"): match the class
  if (err && err.constructor && err.constructor.name === "EventStreamClose") {
    console.error("ignored after close (as a browser does):", String(err));
    return;
  }
  throw err;
});

const args = JSON.parse(process.argv[2]);
// the client logs to the console too: our lines are the ones marked "@@ "
const print = (obj) => process.stdout.write("@@ " + JSON.stringify(obj) + "\n");

async function follow(stopAfter) {
  const repo = new BinderRepository(args.spec, new URL(args.endpoint), {
    apiToken: args.apiToken,
    buildOnly: Boolean(args.buildOnly),
  });
  for await (const data of repo.fetch()) {
    print({ event: data });
    if (stopAfter && data.phase === stopAfter) {
      // a browser tab closed or reloaded mid-build
      repo.close();
      return { closed: data.phase };
    }
    if (data.phase === "failed") {
      repo.close();
      return { failed: data };
    }
    if (data.phase === "ready") {
      // as BinderHub's page: close first, then go to the server
      repo.close();
      if (args.buildOnly) {
        // as jupyterhub-fancy-profiles: the image for the spawn form
        return { imageName: data.imageName };
      }
      const launch = LaunchSpec.fromSearchParams(new URLSearchParams(args.query || ""));
      const url = launch.getJupyterServerRedirectUrl(new URL(data.url), data.token);
      return { open: url.toString() };
    }
  }
  return { ended: true };
}

if (args.reconnectAfter) {
  print({ first: await follow(args.reconnectAfter) });
}
print({ done: await follow(null) });
