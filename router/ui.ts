// The topology page at /ui: one self-contained HTML page (no build step), fed
// by server-sent events from /ui/events carrying a small view of the report.
import type { FastifyInstance } from 'fastify';
import { buildReport, type ReportSources } from './report.js';
import type { Report } from './contract.js';

/** An address ring as the page shows it. */
function ringView(ipam: NonNullable<Report['ipam6']>) {
  return {
    range: ipam.range,
    state: ipam.state,
    peers: ipam.peers.map((p) => ({
      name: p.name,
      nickname: p.nickname,
      percent: p.percent,
      free: p.free,
      reachable: p.reachable,
    })),
  };
}

/** What the page needs, and no more (the full report is at /report). */
function uiView(r: Report) {
  return {
    name: r.name,
    nickname: r.nickname,
    peers: r.peers.map((p) => ({
      name: p.name,
      nickname: p.nickname,
      connections: p.connections.map((c) => ({ name: c.name, established: c.established })),
    })),
    // Only our own connections have a known overlay.
    connections: r.connections
      .filter((c) => c.peer)
      .map((c) => ({
        peer: c.peer!,
        nickname: c.nickname ?? null,
        state: c.state,
        overlay: c.overlay ?? null,
        reason: c.fallbackReason ?? null,
        info: c.info,
        // The underlay address it runs over (IPv4 or IPv6).
        address: c.address,
      })),
    ipam: ringView(r.ipam),
    // The IPv6 ring, once it has started (a router with --ipv6, or an IPv6 address asked for).
    ipam6: r.ipam6 && r.ipam6.peers.length > 0 ? ringView(r.ipam6) : null,
    dns: r.dns.entries.map((e) => ({
      hostname: e.hostname,
      ip: e.ip,
      origin: r.peers.find((p) => p.name === e.origin)?.nickname ?? e.origin,
    })),
  };
}

export function registerUiRoutes(app: FastifyInstance, sources: ReportSources, intervalMs = 1000): void {
  app.get('/ui', async (_req, reply) => reply.type('text/html; charset=utf-8').send(PAGE));
  app.get('/ui/state', async () => uiView(buildReport(sources)));
  app.get('/ui/events', (req, reply) => {
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
    let last = '';
    let quiet = 0;
    const push = () => {
      const data = JSON.stringify(uiView(buildReport(sources)));
      if (data !== last) {
        last = data;
        quiet = 0;
        res.write(`data: ${data}\n\n`);
      } else if (++quiet * intervalMs >= 15_000) {
        quiet = 0;
        res.write(': still here\n\n'); // keeps proxies from closing an idle stream
      }
    };
    push();
    const timer = setInterval(push, intervalMs);
    req.raw.on('close', () => clearInterval(timer));
  });
}

const PAGE = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>weft</title>
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em;margin:0 0 .2em} h2{font-size:1.05em;margin:1.2em 0 .4em}
#status{color:#666} .grid{display:flex;gap:2em;flex-wrap:wrap}
svg{border:1px solid #ddd;border-radius:6px;background:#fcfcfc}
table{border-collapse:collapse} td,th{padding:.15em .7em;text-align:left;border-bottom:1px solid #eee}
.legend span{display:inline-block;margin-right:1em} .sw{display:inline-block;width:1.6em;height:.3em;vertical-align:middle;margin-right:.3em}
.bar{height:.8em;background:#4a7;display:inline-block;vertical-align:middle}
</style></head><body>
<h1>weft <span id="me"></span></h1><div id="status">connecting...</div>
<div class="grid"><div>
<h2>Mesh</h2>
<svg id="graph" width="520" height="420" role="img" aria-label="mesh topology"></svg>
<div class="legend"><span><i class="sw" style="background:#2a8"></i>fastdp</span><span><i class="sw" style="background:#e90"></i>sleeve</span><span><i class="sw" style="background:#d33"></i>no data path</span><span><i class="sw" style="background:#999"></i>between other peers</span><span><i class="sw" style="background:#ccc;border-top:1px dashed #999"></i>pending</span></div>
<h2>Connections of this peer</h2><table id="conns"></table>
</div><div>
<h2>Address ring <span id="range"></span></h2><table id="ring"></table>
<div id="v6" hidden><h2>IPv6 address ring <span id="range6"></span></h2><table id="ring6"></table></div>
<h2>DNS</h2><table id="dns"></table>
</div></div>
<script>
const NS='http://www.w3.org/2000/svg';
const el=(tag,attrs,text)=>{const e=document.createElementNS(NS,tag);for(const k in attrs)e.setAttribute(k,attrs[k]);if(text!==undefined)e.textContent=text;return e};
const esc=(s)=>String(s??'').replace(/[&<>"]/g,(c)=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
const colour={fastdp:'#2a8',ovs:'#28a',sleeve:'#e90',none:'#d33'};
function draw(v){
  document.getElementById('me').textContent=v.nickname+' ('+v.name+')';
  document.getElementById('status').textContent=v.peers.length+' peer(s), updated '+new Date().toLocaleTimeString();
  const svg=document.getElementById('graph');svg.replaceChildren();
  const W=520,H=420,R=Math.min(W,H)/2-60,pos={};
  const peers=[...v.peers].sort((a,b)=>a.name<b.name?-1:1);
  peers.forEach((p,i)=>{const a=2*Math.PI*i/peers.length-Math.PI/2;pos[p.name]=[W/2+R*Math.cos(a),H/2+R*Math.sin(a)]});
  const mine=new Map(v.connections.map((c)=>[c.peer,c]));const seen=new Set();
  for(const p of peers)for(const c of p.connections){
    const key=[p.name,c.name].sort().join(' ');if(seen.has(key)||!pos[c.name])continue;seen.add(key);
    let stroke='#999',dash='',title=p.nickname+' - '+c.name;
    const own=p.name===v.name?mine.get(c.name):c.name===v.name?mine.get(p.name):null;
    if(own){stroke=own.state==='established'?(colour[own.overlay]||'#999'):'#ccc';if(own.state!=='established')dash='6 4';title=own.info}
    else if(!c.established){stroke='#ccc';dash='6 4'}
    const [x1,y1]=pos[p.name],[x2,y2]=pos[c.name];
    const line=el('line',{x1,y1,x2,y2,stroke,'stroke-width':own?4:2,'stroke-dasharray':dash,'class':'edge','data-a':p.name,'data-b':c.name,'data-overlay':own?(own.overlay||''):''});
    line.appendChild(el('title',{},title));svg.appendChild(line);
  }
  for(const p of peers){const [x,y]=pos[p.name];const g=el('g',{'class':'peer','data-name':p.name});
    g.appendChild(el('circle',{cx:x,cy:y,r:p.name===v.name?16:12,fill:p.name===v.name?'#357':'#68a'}));
    g.appendChild(el('text',{x,y:y+32,'text-anchor':'middle'},p.nickname));g.appendChild(el('title',{},p.name));svg.appendChild(g)}
  document.getElementById('conns').innerHTML='<tr><th>peer</th><th>underlay</th><th>state</th><th>overlay</th><th>why not fastdp</th></tr>'+v.connections.map((c)=>'<tr><td title="'+esc(c.peer)+'">'+esc(c.nickname||c.peer)+'</td><td>'+esc(c.address)+'</td><td>'+esc(c.state)+'</td><td>'+esc(c.overlay)+'</td><td>'+esc(c.reason)+'</td></tr>').join('');
  const ring=(id,r)=>{document.getElementById('range'+id).textContent=r.range+' - '+r.state;
    document.getElementById('ring'+id).innerHTML='<tr><th>peer</th><th>share</th><th></th><th>free</th></tr>'+r.peers.map((p)=>'<tr><td>'+esc(p.nickname||p.name)+(p.reachable?'':' (unreachable)')+'</td><td>'+Number(p.percent).toFixed(1)+'%</td><td><span class="bar" style="width:'+Math.max(1,Number(p.percent)*1.5)+'px"></span></td><td>'+esc(p.free)+'</td></tr>').join('')};
  ring('',v.ipam);document.getElementById('v6').hidden=!v.ipam6;if(v.ipam6)ring('6',v.ipam6);
  document.getElementById('dns').innerHTML='<tr><th>name</th><th>address</th><th>peer</th></tr>'+v.dns.map((e)=>'<tr><td>'+esc(e.hostname)+'</td><td>'+esc(e.ip)+'</td><td>'+esc(e.origin)+'</td></tr>').join('');
}
const events=new EventSource('/ui/events');
events.onmessage=(m)=>draw(JSON.parse(m.data));
events.onerror=()=>{document.getElementById('status').textContent='lost the router; retrying...'};
</script></body></html>
`;
