/*
 * weft-cni: the CNI plugin binary a container runtime runs (kubelet's runtime,
 * podman, containerd). It does no networking itself: it hands the request (the
 * CNI_* variables and the config on stdin) to the local weft router over its
 * HTTP API (POST /cni) and prints the answer, so a pod start costs a process of
 * a few hundred kilobytes instead of a Node start-up. Built static, so it runs on
 * a host with no Node and no weft checkout (`weft setup-cni` installs it).
 *
 * Where the router cannot be reached it still does what the spec asks of a
 * plugin: VERSION is answered here, DEL removes the interface itself and
 * succeeds (the router frees the address when it finds the namespace gone),
 * STATUS says "not available" (50), and ADD, CHECK and GC say "try again later"
 * (11).
 *
 * Build: cc -O2 -static -o weft-cni weft-cni.c (native/build.mjs does it).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define SUPPORTED "[\"0.3.0\",\"0.3.1\",\"0.4.0\",\"1.0.0\",\"1.1.0\"]"
#define DEFAULT_ROUTER "127.0.0.1:6784"
#define MAX_CONFIG (512 * 1024)
#define MAX_ANSWER (4 * 1024 * 1024)
/* The router bounds its own waits (IPAM, attach); this only guards against a hung router. */
#define ANSWER_TIMEOUT_S 300

/* A growable byte buffer; running out of memory ends the plugin with an error. */
struct buf {
  char *data;
  size_t len, cap;
};

static char version[17] = "1.1.0";

static void fail(int code, const char *msg, const char *details);

static void put(struct buf *b, const char *s, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n + 1) cap *= 2;
    char *d = realloc(b->data, cap);
    if (!d) fail(5, "out of memory", "");
    b->data = d;
    b->cap = cap;
  }
  memcpy(b->data + b->len, s, n);
  b->len += n;
  b->data[b->len] = 0;
}

static void puts_(struct buf *b, const char *s) { put(b, s, strlen(s)); }

/* A JSON string literal of s (quotes included). */
static void put_json(struct buf *b, const char *s) {
  puts_(b, "\"");
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    char esc[8];
    if (*p == '"' || *p == '\\') {
      esc[0] = '\\';
      esc[1] = (char)*p;
      put(b, esc, 2);
    } else if (*p < 0x20) {
      snprintf(esc, sizeof esc, "\\u%04x", *p);
      put(b, esc, 6);
    } else {
      put(b, (const char *)p, 1);
    }
  }
  puts_(b, "\"");
}

/* Prints a CNI error object (the config's own cniVersion) and exits 1. */
static void fail(int code, const char *msg, const char *details) {
  struct buf b = {0};
  char head[64];
  snprintf(head, sizeof head, "{\"cniVersion\":\"%s\",\"code\":%d,\"msg\":", version, code);
  puts_(&b, head);
  put_json(&b, msg);
  puts_(&b, ",\"details\":");
  put_json(&b, details);
  puts_(&b, "}\n");
  fwrite(b.data, 1, b.len, stdout);
  exit(1);
}

static const char *env(const char *name) {
  const char *v = getenv(name);
  return v ? v : "";
}

/*
 * The string value of a top-level-looking "key": "value" in the config. Good enough for the two keys
 * read here (cniVersion, routerAddr), which the router checks properly; escapes end the value.
 */
static int config_string(const char *config, const char *key, char *out, size_t size) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\"", key);
  const char *p = strstr(config, pat);
  if (!p) return 0;
  p += strlen(pat);
  while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
  if (*p++ != ':') return 0;
  while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
  if (*p++ != '"') return 0;
  size_t n = 0;
  while (p[n] && p[n] != '"' && p[n] != '\\') n++;
  if (p[n] != '"' || n == 0 || n >= size) return 0;
  memcpy(out, p, n);
  out[n] = 0;
  return 1;
}

static void read_config(struct buf *b) {
  char chunk[65536];
  for (;;) {
    ssize_t n = read(0, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail(5, "cannot read the network configuration on stdin", strerror(errno));
    if (n == 0) break;
    if (b->len + (size_t)n > MAX_CONFIG) fail(5, "the network configuration on stdin is too large", "");
    put(b, chunk, (size_t)n);
  }
  if (!b->data) puts_(b, "");
}

/* Connects to the router's API: "unix:/path", "host:port" or "[v6]:port" (literal addresses only). */
static int dial(const char *addr, char *why, size_t whysize) {
  int fd = -1;
  if (strncmp(addr, "unix:", 5) == 0) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(addr + 5) >= sizeof sa.sun_path) {
      snprintf(why, whysize, "socket path too long");
      return -1;
    }
    strcpy(sa.sun_path, addr + 5);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) return fd;
  } else {
    char host[64];
    const char *colon = strrchr(addr, ':');
    size_t hl = colon ? (size_t)(colon - addr) : 0;
    if (!colon || hl == 0 || hl >= sizeof host) {
      snprintf(why, whysize, "routerAddr must be HOST:PORT or unix:/PATH");
      return -1;
    }
    memcpy(host, addr, hl);
    host[hl] = 0;
    long port = strtol(colon + 1, NULL, 10);
    if (port <= 0 || port > 65535) {
      snprintf(why, whysize, "bad port in routerAddr");
      return -1;
    }
    if (strcmp(host, "localhost") == 0 || strcmp(host, "0.0.0.0") == 0) strcpy(host, "127.0.0.1");
    struct sockaddr_in v4 = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    struct sockaddr_in6 v6 = {.sin6_family = AF_INET6, .sin6_port = htons((unsigned short)port)};
    if (host[0] == '[' && host[hl - 1] == ']') {
      host[hl - 1] = 0;
      if (strcmp(host + 1, "::") == 0) strcpy(host + 1, "::1");
      if (inet_pton(AF_INET6, host + 1, &v6.sin6_addr) != 1) {
        snprintf(why, whysize, "routerAddr must name an address, not a host name");
        return -1;
      }
      fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd >= 0 && connect(fd, (struct sockaddr *)&v6, sizeof v6) == 0) return fd;
    } else {
      if (inet_pton(AF_INET, host, &v4.sin_addr) != 1) {
        snprintf(why, whysize, "routerAddr must name an address, not a host name");
        return -1;
      }
      fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd >= 0 && connect(fd, (struct sockaddr *)&v4, sizeof v4) == 0) return fd;
    }
  }
  snprintf(why, whysize, "%s", strerror(errno));
  if (fd >= 0) close(fd);
  return -1;
}

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Removes ifname inside the namespace at netns over rtnetlink; quiet when either is gone. */
static void delete_link(const char *netns, const char *ifname) {
  if (!*netns || !*ifname || strlen(ifname) >= 16) return;
  int ns = open(netns, O_RDONLY | O_CLOEXEC);
  if (ns < 0) return;
  int entered = setns(ns, CLONE_NEWNET);
  close(ns);
  if (entered != 0) return;
  int nl = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  if (nl < 0) return;
  struct {
    struct nlmsghdr n;
    struct ifinfomsg i;
    char attrs[64];
  } req;
  memset(&req, 0, sizeof req);
  req.n.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifinfomsg));
  req.n.nlmsg_type = RTM_DELLINK;
  req.n.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
  req.i.ifi_family = AF_UNSPEC;
  struct rtattr *rta = (struct rtattr *)((char *)&req + NLMSG_ALIGN(req.n.nlmsg_len));
  rta->rta_type = IFLA_IFNAME;
  rta->rta_len = (unsigned short)RTA_LENGTH(strlen(ifname) + 1);
  memcpy(RTA_DATA(rta), ifname, strlen(ifname) + 1);
  req.n.nlmsg_len = NLMSG_ALIGN(req.n.nlmsg_len) + RTA_ALIGN(rta->rta_len);
  struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
  if (sendto(nl, &req, req.n.nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof kernel) >= 0) {
    char ack[512];
    struct timeval tv = {.tv_sec = 5};
    setsockopt(nl, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    (void)recv(nl, ack, sizeof ack, 0);
  }
  close(nl);
}

int main(void) {
  const char *command = env("CNI_COMMAND");
  if (!*command && isatty(0)) {
    fprintf(stderr,
            "weft-cni: weft's CNI plugin, run by a container runtime (CNI_COMMAND=ADD|DEL|CHECK|STATUS|GC|VERSION,\n"
            "the network configuration on stdin). It hands each request to the local weft router.\n"
            "Install it with: weft setup-cni [--bin-dir /opt/cni/bin] [--conf-dir /etc/cni/net.d]\n");
    return 1;
  }
  struct buf config = {0};
  read_config(&config);
  char v[17];
  if (config_string(config.data, "cniVersion", v, sizeof v) && strspn(v, "0123456789.") == strlen(v))
    strcpy(version, v);

  if (strcmp(command, "VERSION") == 0) {
    printf("{\"cniVersion\":\"%s\",\"supportedVersions\":%s}\n", version, SUPPORTED);
    return 0;
  }

  char router[512] = DEFAULT_ROUTER;
  config_string(config.data, "routerAddr", router, sizeof router);

  struct buf body = {0};
  puts_(&body, "{\"command\":");
  put_json(&body, command);
  const char *fields[][2] = {{"containerId", "CNI_CONTAINERID"}, {"netns", "CNI_NETNS"}, {"ifname", "CNI_IFNAME"},
                             {"args", "CNI_ARGS"},               {"path", "CNI_PATH"}};
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
    if (!getenv(fields[i][1])) continue;
    puts_(&body, ",\"");
    puts_(&body, fields[i][0]);
    puts_(&body, "\":");
    put_json(&body, env(fields[i][1]));
  }
  puts_(&body, ",\"config\":");
  put_json(&body, config.data);
  puts_(&body, "}");

  char why[256];
  int fd = dial(router, why, sizeof why);
  if (fd < 0) {
    char msg[700];
    snprintf(msg, sizeof msg, "the weft router at %s does not answer (%s); is it running?", router, why);
    if (strcmp(command, "DEL") == 0) {
      delete_link(env("CNI_NETNS"), env("CNI_IFNAME"));
      return 0;
    }
    fail(strcmp(command, "STATUS") == 0 ? 50 : 11, msg, "");
  }
  struct timeval tv = {.tv_sec = ANSWER_TIMEOUT_S};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char head[1024];
  /* The API checks Host against its own address (DNS rebinding); over a socket any name does. */
  snprintf(head, sizeof head,
           "POST /cni HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
           "Connection: close\r\n\r\n",
           strncmp(router, "unix:", 5) == 0 ? "localhost" : router, body.len);
  if (write_all(fd, head, strlen(head)) < 0 || write_all(fd, body.data, body.len) < 0)
    fail(11, "the weft router closed the connection before taking the request", strerror(errno));

  struct buf answer = {0};
  char chunk[65536];
  for (;;) {
    ssize_t n = read(fd, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail(11, "no answer from the weft router", strerror(errno));
    if (n == 0) break;
    if (answer.len + (size_t)n > MAX_ANSWER) fail(100, "the weft router's answer is too large", "");
    put(&answer, chunk, (size_t)n);
  }
  close(fd);
  int status = 0;
  char *sep = answer.data ? strstr(answer.data, "\r\n\r\n") : NULL;
  if (!sep || sscanf(answer.data, "HTTP/1.%*d %d", &status) != 1)
    fail(100, "the weft router's answer is not HTTP", answer.data ? answer.data : "");
  const char *out = sep + 4;
  if (strstr(answer.data, "Transfer-Encoding: chunked") && strstr(answer.data, "Transfer-Encoding: chunked") < sep)
    fail(100, "the weft router answered in chunks, which this plugin does not read", "");
  if (status == 200 || status == 422) {
    if (*out) printf("%s\n", out);
    return status == 200 ? 0 : 1;
  }
  char msg[128];
  snprintf(msg, sizeof msg, "the weft router answered HTTP %d (is it older than this plugin?)", status);
  fail(100, msg, out);
  return 1;
}
