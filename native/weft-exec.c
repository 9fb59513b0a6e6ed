// weft-exec: runs the router's commands (ip, bridge, nft, nsenter ...) on request.
//
// The router starts one of these and sends it commands over a pipe instead of
// starting each process itself: a process started by Node forks the whole
// router (75 MB, its threads, then copy-on-write faults in its heap), about
// 8 ms of the router's CPU per command, where posix_spawn from this small
// program costs under 2 ms. Attaching a container runs about eleven commands,
// starting the router about forty. `nsenter --net=PATH CMD ...` is done here
// (setns, then CMD), without starting nsenter.
//
// One request at a time, in order, on standard input; each answer on standard
// output. All integers are 32-bit little-endian. First, before any request, a
// length of 0 alone: "running" (a helper that ends before it was never running).
//   request: length, then id, timeout (ms), argc, input length, argc
//            NUL-terminated strings (the first is looked up in PATH), the input
//   answer:  length, then id, status, stdout length, stderr length, stdout, stderr
// status: the exit code (0-255); 1000 + signal when killed (a timeout kills with
// SIGKILL); 2000 + errno when the command could not be started (2002: not
// found); 3000 when its output passed the limit (it is killed). Ends when
// standard input does. Runs only what it is asked: it listens on nothing, and
// only its parent holds the pipe.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char** environ;

#define MAX_REQUEST (64u << 20)
#define MAX_OUTPUT (64u << 20)

static int readFull(int fd, void* buf, size_t n) {
  uint8_t* p = buf;
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

static int writeFull(int fd, const void* buf, size_t n) {
  const uint8_t* p = buf;
  while (n > 0) {
    ssize_t r = write(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

static uint32_t get32(const uint8_t* p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static void put32(uint8_t* p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)(v >> 16);
  p[3] = (uint8_t)(v >> 24);
}

struct Output {
  uint8_t* data;
  size_t len, cap;
};

// Appends what fd has; 0 at EOF, 1 when more may come, -1 past the limit.
static int drain(int fd, struct Output* o) {
  for (;;) {
    if (o->cap - o->len < 65536) {
      size_t cap = o->cap ? o->cap * 2 : 65536;
      uint8_t* d = realloc(o->data, cap);
      if (!d) return -1;
      o->data = d;
      o->cap = cap;
    }
    ssize_t r = read(fd, o->data + o->len, o->cap - o->len);
    if (r > 0) {
      o->len += (size_t)r;
      if (o->len > MAX_OUTPUT) return -1;
      continue;
    }
    if (r == 0) return 0;
    if (errno == EINTR) continue;
    return errno == EAGAIN ? 1 : 0;
  }
}

static int64_t nowMs(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

// `nsenter --net=PATH CMD ARGS...`, the router's way into a container's namespace, costs a second
// exec (nsenter's own) for nothing: done here with fork, setns and exec instead, with nsenter's
// messages and exit codes. Any other nsenter command line runs nsenter.
static int isNetEnter(char** argv) {
  return strcmp(argv[0], "nsenter") == 0 && argv[1] && strncmp(argv[1], "--net=", 6) == 0 && argv[2] &&
         argv[2][0] != '-';
}

static void say(int fd, const char* a, const char* b, const char* c) {
  (void)!write(fd, "nsenter: ", 9);
  (void)!write(fd, a, strlen(a));
  (void)!write(fd, b, strlen(b));
  (void)!write(fd, ": ", 2);
  (void)!write(fd, c, strlen(c));
  (void)!write(fd, "\n", 1);
}

// Starts argv with its standard streams on these fds; 0, or an errno when it could not start.
static int start(char** argv, int in, int out, int err, pid_t* pid) {
  sigset_t all, none;
  sigfillset(&all);
  sigemptyset(&none);
  if (isNetEnter(argv)) {
    pid_t p = fork();
    if (p < 0) return errno;
    if (p == 0) {
      // The child gets default signal handling (this program ignores SIGPIPE) and an empty mask.
      signal(SIGPIPE, SIG_DFL);
      sigprocmask(SIG_SETMASK, &none, NULL);
      dup2(in, 0);
      dup2(out, 1);
      dup2(err, 2);
      int ns = open(argv[1] + 6, O_RDONLY | O_CLOEXEC);
      if (ns < 0) {
        say(2, "cannot open ", argv[1] + 6, strerror(errno));
        _exit(1);
      }
      if (setns(ns, CLONE_NEWNET) < 0) {
        say(2, "reassociate to namespace 'ns/net' failed", "", strerror(errno));
        _exit(1);
      }
      execvp(argv[2], argv + 2);
      int e = errno;
      say(2, "failed to execute ", argv[2], strerror(e));
      _exit(e == ENOENT ? 127 : 126);
    }
    *pid = p;
    return 0;
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in, 0);
  posix_spawn_file_actions_adddup2(&fa, out, 1);
  posix_spawn_file_actions_adddup2(&fa, err, 2);
  // The child gets default signal handling (this program ignores SIGPIPE) and an empty mask.
  posix_spawnattr_t at;
  posix_spawnattr_init(&at);
  posix_spawnattr_setsigdefault(&at, &all);
  posix_spawnattr_setsigmask(&at, &none);
  posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
  int rc = posix_spawnp(pid, argv[0], &fa, &at, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&at);
  return rc;
}

static uint32_t run(char** argv, const uint8_t* input, uint32_t inLen, uint32_t timeoutMs, struct Output* out,
                    struct Output* err) {
  int in[2], o[2], e[2];
  if (pipe2(in, O_CLOEXEC) || pipe2(o, O_CLOEXEC) || pipe2(e, O_CLOEXEC)) return 2000 + errno;
  pid_t pid;
  int rc = start(argv, in[0], o[1], e[1], &pid);
  close(in[0]);
  close(o[1]);
  close(e[1]);
  if (rc != 0) {
    close(in[1]);
    close(o[0]);
    close(e[0]);
    return 2000 + (uint32_t)rc;
  }
  fcntl(in[1], F_SETFL, O_NONBLOCK);
  fcntl(o[0], F_SETFL, O_NONBLOCK);
  fcntl(e[0], F_SETFL, O_NONBLOCK);
  uint32_t sent = 0;
  int inFd = in[1], outOpen = 1, errOpen = 1, overflow = 0, killed = 0;
  if (inLen == 0) {
    close(inFd);
    inFd = -1;
  }
  int64_t deadline = nowMs() + (timeoutMs ? timeoutMs : 20000);
  while (outOpen || errOpen) {
    struct pollfd p[3];
    int n = 0;
    if (outOpen) p[n++] = (struct pollfd){o[0], POLLIN, 0};
    if (errOpen) p[n++] = (struct pollfd){e[0], POLLIN, 0};
    if (inFd >= 0) p[n++] = (struct pollfd){inFd, POLLOUT, 0};
    int64_t left = deadline - nowMs();
    if (left <= 0 && !killed) {
      kill(pid, SIGKILL);
      killed = 1;
    }
    int r = poll(p, n, left > 0 ? (int)left : 100);
    if (r < 0 && errno != EINTR) break;
    for (int i = 0; i < n; i++) {
      if (!p[i].revents) continue;
      if (p[i].fd == inFd) {
        ssize_t w = write(inFd, input + sent, inLen - sent);
        if (w > 0) sent += (uint32_t)w;
        if ((w < 0 && errno != EAGAIN && errno != EINTR) || sent == inLen) {
          close(inFd);
          inFd = -1;
        }
        continue;
      }
      struct Output* to = p[i].fd == o[0] ? out : err;
      int d = drain(p[i].fd, to);
      if (d < 0 && !overflow) {
        overflow = 1;
        kill(pid, SIGKILL);
      }
      if (d <= 0) {
        if (p[i].fd == o[0]) outOpen = 0;
        else errOpen = 0;
      }
    }
  }
  if (inFd >= 0) close(inFd);
  close(o[0]);
  close(e[0]);
  int st;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  if (overflow) return 3000;
  if (WIFSIGNALED(st)) return 1000 + (uint32_t)WTERMSIG(st);
  return (uint32_t)WEXITSTATUS(st);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  uint8_t running[4] = {0};
  if (writeFull(1, running, 4)) return 0;
  for (;;) {
    uint8_t head[4];
    if (readFull(0, head, 4)) return 0;
    uint32_t len = get32(head);
    if (len < 16 || len > MAX_REQUEST) return 2;
    uint8_t* req = malloc(len + 1);
    if (!req || readFull(0, req, len)) return 2;
    req[len] = 0;
    uint32_t id = get32(req), timeoutMs = get32(req + 4), argc = get32(req + 8), inLen = get32(req + 12);
    if (argc == 0 || argc > 4096 || inLen > len - 16) return 2;
    char** argv = calloc(argc + 1, sizeof(char*));
    if (!argv) return 2;
    uint8_t* p = req + 16;
    uint8_t* strings = req + len - inLen;  // the strings end where the input starts
    for (uint32_t i = 0; i < argc; i++) {
      uint8_t* nul = memchr(p, 0, (size_t)(strings - p));
      if (!nul) return 2;
      argv[i] = (char*)p;
      p = nul + 1;
    }
    struct Output out = {0}, err = {0};
    uint32_t status = run(argv, strings, inLen, timeoutMs, &out, &err);
    uint8_t answer[20];
    put32(answer, (uint32_t)(16 + out.len + err.len));
    put32(answer + 4, id);
    put32(answer + 8, status);
    put32(answer + 12, (uint32_t)out.len);
    put32(answer + 16, (uint32_t)err.len);
    if (writeFull(1, answer, 20) || writeFull(1, out.data, out.len) || writeFull(1, err.data, err.len)) return 0;
    free(out.data);
    free(err.data);
    free(argv);
    free(req);
  }
}
