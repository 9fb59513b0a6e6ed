// Ports for routers that tests run on loopback. Below the kernel's ephemeral range
// (32768-60999 by default), so no outgoing connection of this or another test holds
// one, and checked free for TCP and UDP before use (test files run side by side).
import dgram from 'node:dgram';
import net from 'node:net';

const LOW = 20_000;
const HIGH = 32_000;

function tcpFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

function udpFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = dgram.createSocket('udp4');
    s.once('error', () => {
      s.close();
      resolve(false);
    });
    s.bind(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

/** The first of `count` consecutive ports free on 127.0.0.1 for TCP and UDP (a router uses its port and the next). */
export async function freePorts(count = 2): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = LOW + Math.floor(Math.random() * (HIGH - LOW - count));
    let free = true;
    for (let p = base; p < base + count && free; p++) free = (await tcpFree(p)) && (await udpFree(p));
    if (free) return base;
  }
  throw new Error(`no ${count} consecutive free ports between ${LOW} and ${HIGH} on 127.0.0.1`);
}
