// Runs many API requests from inside a host's namespace at once (the router API
// listens on that namespace's loopback). Returns each answer's status and body.
import type { Host } from './cluster.js';

export interface ApiAnswer {
  status: number;
  body: string;
}

export async function apiRequests(host: Host, requests: { method: string; path: string }[]): Promise<ApiAnswer[]> {
  const script = `
    const reqs = JSON.parse(process.argv[1]);
    const out = await Promise.all(reqs.map(async (r) => {
      try {
        const res = await fetch('http://127.0.0.1:6784' + r.path, { method: r.method });
        return { status: res.status, body: await res.text() };
      } catch (e) { return { status: 0, body: String(e) }; }
    }));
    process.stdout.write(JSON.stringify(out));`;
  const r = await host.exec(process.execPath, ['--input-type=module', '-e', script, JSON.stringify(requests)], {
    timeoutMs: 120_000,
  });
  if (r.code !== 0) throw new Error(`api requests on ${host.nickname} failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as ApiAnswer[];
}
