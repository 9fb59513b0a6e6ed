// weft's native I/O: a UDP socket and a TAP port, read and written in
// batches, driven by the event loop through uv_poll (non-blocking fds, no
// threads). Node's own dgram sockets and fs reads cost a system call (and more)
// per packet, which is what limits a userspace datapath; here one recvmmsg or
// sendmmsg moves up to a whole batch.
//
// Memory is shared with JavaScript: the caller hands in the buffers (data
// slots and a Uint32Array of per-slot metadata), native code fills or reads
// them, and JavaScript handles a whole batch per callback, synchronously.
#include <napi.h>
#include <openssl/evp.h>
#include <sched.h>
#include <uv.h>

#include <arpa/inet.h>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <linux/netlink.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <string>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <algorithm>
#include <array>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace {

// Metadata words per slot: length, IPv4 address (host order), port, flags.
constexpr int META = 4;
constexpr uint32_t FLAG_TRUNCATED = 1;
// Batches handled per readiness event before yielding to the rest of the loop.
constexpr int MAX_BATCHES_PER_EVENT = 16;

std::string errnoText(const char* what, int err) { return std::string(what) + ": " + strerror(err); }

// Runs `make` inside the network namespace at `path` (empty: the current one) and
// switches this thread back afterwards: sockets and TAP interfaces belong to the
// namespace they were created in. Tests use it; the router runs inside its namespace.
template <typename F>
std::string inNetns(const std::string& path, F make) {
  if (path.empty()) return make();
  int target = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (target < 0) return errnoText(("open " + path).c_str(), errno);
  int home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (home < 0) {
    ::close(target);
    return errnoText("open /proc/thread-self/ns/net", errno);
  }
  std::string err;
  if (setns(target, CLONE_NEWNET) != 0) {
    err = errnoText(("setns " + path).c_str(), errno);
  } else {
    err = make();
    if (setns(home, CLONE_NEWNET) != 0) abort();  // cannot continue in the wrong namespace
  }
  ::close(target);
  ::close(home);
  return err;
}

// Underlay addresses are 32-bit words in the slot metadata: an IPv4 address (host order), or a
// handle for an IPv6 one. Handles live in 0.0.0.0/8 ("this network": JavaScript never gives a peer
// such an address) and number the IPv6 addresses JavaScript registered for its hops (addressHandle),
// which it releases when no hop has them any more (releaseAddressHandle): a handle freed is used
// again, so the table holds at most as many addresses as there are hops.
struct Ipv6Handles {
  static constexpr uint32_t LIMIT = 1u << 24;
  static constexpr size_t MAX = 65536;
  struct Key {
    uint64_t hi, lo;
    bool operator==(const Key& o) const { return hi == o.hi && lo == o.lo; }
  };
  // Seeded at start, so no one can choose addresses that pile into one bucket.
  struct KeyHash {
    uint64_t seed;
    static uint64_t mix(uint64_t x) {
      x ^= x >> 30;
      x *= 0xbf58476d1ce4e5b9ULL;
      x ^= x >> 27;
      x *= 0x94d049bb133111ebULL;
      return x ^ (x >> 31);
    }
    size_t operator()(const Key& k) const { return size_t(mix(k.hi ^ seed) ^ mix(k.lo + seed)); }
  };
  std::vector<in6_addr> addrs;  // handle h is addrs[h - 1]; unspecified (::) when free
  std::vector<uint32_t> free;
  std::unordered_map<Key, uint32_t, KeyHash> byAddr;

  Ipv6Handles() : byAddr(16, KeyHash{randomSeed()}) {}
  static uint64_t randomSeed() {
    uint64_t s = 0;
    if (getrandom(&s, sizeof s, 0) != sizeof s) s = uint64_t(reinterpret_cast<uintptr_t>(&s)) * 0x9e3779b97f4a7c15ULL;
    return s;
  }

  static bool isHandle(uint32_t a) { return a != 0 && a < LIMIT; }
  static Key key(const in6_addr& a) {
    Key k;
    memcpy(&k.hi, a.s6_addr, 8);
    memcpy(&k.lo, a.s6_addr + 8, 8);
    return k;
  }
  uint32_t find(const in6_addr& a) const {
    auto it = byAddr.find(key(a));
    return it == byAddr.end() ? 0 : it->second;
  }
  // 0 when the table is full (or the address is unspecified: never a peer's).
  uint32_t add(const in6_addr& a) {
    uint32_t h = find(a);
    if (h != 0 || IN6_IS_ADDR_UNSPECIFIED(&a)) return h;
    if (!free.empty()) {
      h = free.back();
      free.pop_back();
      addrs[h - 1] = a;
    } else {
      if (addrs.size() >= MAX) return 0;
      addrs.push_back(a);
      h = uint32_t(addrs.size());
    }
    byAddr[key(a)] = h;
    return h;
  }
  void release(uint32_t h) {
    if (!isHandle(h) || h > addrs.size() || IN6_IS_ADDR_UNSPECIFIED(&addrs[h - 1])) return;
    byAddr.erase(key(addrs[h - 1]));
    addrs[h - 1] = in6addr_any;
    free.push_back(h);
  }
};

Ipv6Handles& ipv6Handles() {
  static Ipv6Handles table;
  return table;
}

// A metadata address and port as the socket address of a socket of `family`; false when it has none
// (a handle not registered, or an IPv6 address for an IPv4-only socket).
bool toSockaddr(uint32_t addr, uint16_t port, int family, sockaddr_storage& ss, socklen_t& len) {
  ss = {};
  if (family == AF_INET) {
    if (Ipv6Handles::isHandle(addr)) return false;
    auto* sa = reinterpret_cast<sockaddr_in*>(&ss);
    sa->sin_family = AF_INET;
    sa->sin_addr.s_addr = htonl(addr);
    sa->sin_port = htons(port);
    len = sizeof(sockaddr_in);
    return true;
  }
  auto* sa = reinterpret_cast<sockaddr_in6*>(&ss);
  sa->sin6_family = AF_INET6;
  sa->sin6_port = htons(port);
  if (Ipv6Handles::isHandle(addr)) {
    const auto& t = ipv6Handles().addrs;
    if (addr > t.size() || IN6_IS_ADDR_UNSPECIFIED(&t[addr - 1])) return false;
    sa->sin6_addr = t[addr - 1];
  } else {
    // IPv4 through the dual-stack socket: ::ffff:a.b.c.d
    sa->sin6_addr.s6_addr[10] = 0xff;
    sa->sin6_addr.s6_addr[11] = 0xff;
    uint32_t be = htonl(addr);
    memcpy(sa->sin6_addr.s6_addr + 12, &be, 4);
  }
  len = sizeof(sockaddr_in6);
  return true;
}

// A datagram's source as a metadata word: its IPv4 address, the handle of a registered IPv6 one, or 0
// (an IPv6 address no peer of ours has: no hop matches it).
uint32_t fromSockaddr(const sockaddr_storage& ss) {
  if (ss.ss_family == AF_INET) return ntohl(reinterpret_cast<const sockaddr_in*>(&ss)->sin_addr.s_addr);
  if (ss.ss_family != AF_INET6) return 0;
  const in6_addr& a = reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_addr;
  if (IN6_IS_ADDR_V4MAPPED(&a)) {
    uint32_t be;
    memcpy(&be, a.s6_addr + 12, 4);
    uint32_t v4 = ntohl(be);
    return Ipv6Handles::isHandle(v4) ? 0 : v4;
  }
  return ipv6Handles().find(a);
}

// Datagrams for one sendmmsg: per slot its buffer, address and, for a train, its segment size.
struct SendBatch {
  std::vector<mmsghdr> msgs;
  std::vector<iovec> iovs;
  std::vector<sockaddr_storage> addrs;
  std::vector<std::array<char, CMSG_SPACE(sizeof(uint16_t))>> ctl;

  void resize(size_t n) {
    msgs.resize(n);
    iovs.resize(n);
    addrs.resize(n);
    ctl.resize(n);
  }

  // Slot i: len bytes at data to addr:port (host order) from a socket of `family`. A segment size
  // below len makes the slot a train of datagrams of that size (the last may be shorter), sent as one
  // (UDP_SEGMENT) and cut by the kernel or the NIC as late as it can. An address the socket cannot
  // reach leaves the slot without one: sendmmsg fails it (EDESTADDRREQ), and send() skips it.
  void set(size_t i, uint8_t* data, uint32_t len, uint32_t addr, uint16_t port, uint16_t segment, int family) {
    iovs[i] = {data, len};
    socklen_t namelen = 0;
    bool ok = toSockaddr(addr, port, family, addrs[i], namelen);
    msgs[i].msg_hdr = {};
    msgs[i].msg_hdr.msg_iov = &iovs[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
    msgs[i].msg_hdr.msg_name = ok ? &addrs[i] : nullptr;
    msgs[i].msg_hdr.msg_namelen = ok ? namelen : 0;
    if (segment > 0 && segment < len) {
      std::memset(ctl[i].data(), 0, ctl[i].size());
      msgs[i].msg_hdr.msg_control = ctl[i].data();
      msgs[i].msg_hdr.msg_controllen = CMSG_SPACE(sizeof(uint16_t));
      cmsghdr* c = CMSG_FIRSTHDR(&msgs[i].msg_hdr);
      c->cmsg_level = SOL_UDP;
      c->cmsg_type = UDP_SEGMENT;
      c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
      memcpy(CMSG_DATA(c), &segment, sizeof segment);
    }
  }

  // Sends slots 0..count-1 on fd; returns how many went. A full queue drops the rest (UDP: as a wire
  // would); a datagram that cannot go (EMSGSIZE with DF, unreachable, ...) is skipped, its error kept.
  uint32_t send(int fd, uint32_t count, std::string& lastError, const char* what) {
    uint32_t done = 0, sent = 0;
    while (done < count) {
      int n = sendmmsg(fd, msgs.data() + done, count - done, MSG_DONTWAIT);
      if (n > 0) {
        done += n;
        sent += n;
        continue;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) break;
      lastError = errnoText(what, errno);
      done++;
    }
    return sent;
  }
};

// Buffers lent by JavaScript; the references keep them alive while we hold pointers.
struct Shared {
  Napi::ObjectReference rxRef, rxMetaRef, txRef, txMetaRef;
  uint8_t* rx = nullptr;
  uint32_t* rxMeta = nullptr;
  uint8_t* tx = nullptr;
  uint32_t* txMeta = nullptr;
  uint32_t slots = 0, slotSize = 0;

  bool take(Napi::Env env, Napi::Object opts) {
    auto rxb = opts.Get("rx"), rxm = opts.Get("rxMeta"), txb = opts.Get("tx"), txm = opts.Get("txMeta");
    if (!rxb.IsBuffer() || !txb.IsBuffer() || !rxm.IsTypedArray() || !txm.IsTypedArray()) {
      Napi::TypeError::New(env, "rx and tx must be Buffers, rxMeta and txMeta Uint32Arrays").ThrowAsJavaScriptException();
      return false;
    }
    slots = opts.Get("slots").As<Napi::Number>().Uint32Value();
    slotSize = opts.Get("slotSize").As<Napi::Number>().Uint32Value();
    auto r = rxb.As<Napi::Buffer<uint8_t>>(), t = txb.As<Napi::Buffer<uint8_t>>();
    auto rm = rxm.As<Napi::Uint32Array>(), tm = txm.As<Napi::Uint32Array>();
    if (slots == 0 || slotSize == 0 || r.Length() < size_t(slots) * slotSize || t.Length() < size_t(slots) * slotSize ||
        rm.ElementLength() < size_t(slots) * META || tm.ElementLength() < size_t(slots) * META) {
      Napi::RangeError::New(env, "buffers are smaller than slots x slotSize (or slots x 4 metadata words)").ThrowAsJavaScriptException();
      return false;
    }
    rx = r.Data();
    tx = t.Data();
    rxMeta = rm.Data();
    txMeta = tm.Data();
    rxRef = Napi::Persistent(rxb.As<Napi::Object>());
    rxMetaRef = Napi::Persistent(rxm.As<Napi::Object>());
    txRef = Napi::Persistent(txb.As<Napi::Object>());
    txMetaRef = Napi::Persistent(txm.As<Napi::Object>());
    return true;
  }
};

// A poll handle for `fd` on the event loop, owned by `owner`; null, with a JavaScript exception
// pending, when libuv refuses it.
uv_poll_t* newPoll(Napi::Env env, int fd, void* owner) {
  uv_loop_t* loop = nullptr;
  napi_get_uv_event_loop(env, &loop);
  auto* poll = new uv_poll_t;
  if (uv_poll_init(loop, poll, fd) != 0) {
    delete poll;
    Napi::Error::New(env, "cannot watch the descriptor (uv_poll_init)").ThrowAsJavaScriptException();
    return nullptr;
  }
  poll->data = owner;
  return poll;
}

// Common to both ports: the fd, its poll handle, the JavaScript callback.
template <typename T>
class Port : public Napi::ObjectWrap<T> {
 public:
  explicit Port(const Napi::CallbackInfo& info) : Napi::ObjectWrap<T>(info) {}
  ~Port() override {
    // Closed without close(): the fd must not leak; the poll handle was never started or is stopped.
    if (fd_ >= 0 && !polling_) ::close(fd_);
  }

 protected:
  int fd_ = -1;
  bool polling_ = false;
  bool closed_ = false;
  uint64_t rxPackets_ = 0, txPackets_ = 0, txDropped_ = 0;
  // How many rx slots the last readBatch left for JavaScript.
  int forJs_ = 0;
  std::string lastError_;
  uv_poll_t* poll_ = nullptr;
  Napi::FunctionReference onReadable_;
  Shared shared_;

  // Checks a constructor's (options, onReadable) arguments and takes the shared buffers; false,
  // with a JavaScript exception pending, when they are wrong.
  bool takeArgs(const Napi::CallbackInfo& info, const char* usage) {
    if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsFunction()) {
      Napi::TypeError::New(info.Env(), usage).ThrowAsJavaScriptException();
      return false;
    }
    return shared_.take(info.Env(), info[0].As<Napi::Object>());
  }

  // Opens the descriptor with `open` (inside the `netns` option's namespace, if given) and polls
  // it; on failure closes what was half opened and throws the reason.
  template <typename F>
  void openAndPoll(const Napi::CallbackInfo& info, F open) {
    auto opts = info[0].As<Napi::Object>();
    std::string netns = opts.Has("netns") ? opts.Get("netns").ToString().Utf8Value() : "";
    std::string err = inNetns(netns, open);
    if (!err.empty()) {
      if (fd_ >= 0) ::close(fd_);
      fd_ = -1;
      Napi::Error::New(info.Env(), err).ThrowAsJavaScriptException();
      return;
    }
    startPolling(info.Env(), info[1].As<Napi::Function>());
  }

  bool startPolling(Napi::Env env, Napi::Function onReadable) {
    onReadable_ = Napi::Persistent(onReadable);
    poll_ = newPoll(env, fd_, this);
    if (!poll_) return false;
    uv_poll_start(poll_, UV_READABLE, [](uv_poll_t* h, int status, int) {
      auto self = static_cast<T*>(h->data);
      if (status < 0) {
        self->lastError_ = std::string("poll: ") + uv_strerror(status);
        return;
      }
      self->drain();
    });
    polling_ = true;
    this->Ref();  // alive while polling, even if JavaScript drops it
    return true;
  }

  // Reads batches and hands each to JavaScript; stops on EAGAIN or after a budget.
  void drain() {
    Napi::Env env = this->Env();
    for (int b = 0; b < MAX_BATCHES_PER_EVENT && !closed_; b++) {
      forJs_ = 0;
      int n = static_cast<T*>(this)->readBatch();
      if (n <= 0) return;
      rxPackets_ += n;
      // Packets the fast path handled need no JavaScript; a batch of only those costs no call.
      if (forJs_ == 0) continue;
      Napi::HandleScope scope(env);
      onReadable_.MakeCallback(this->Value(), {Napi::Number::New(env, forJs_)});
      if (env.IsExceptionPending()) {
        // The JavaScript side catches its own errors; this is a last resort so nothing crashes.
        lastError_ = "callback threw: " + env.GetAndClearPendingException().Message();
      }
    }
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (closed_) return info.Env().Undefined();
    closed_ = true;
    static_cast<T*>(this)->unlink();
    if (polling_) {
      // A stopped poll handle no longer watches the fd, so it may close now (a TAP's name is
      // free again at once); the handle itself goes on the next loop turn.
      uv_poll_stop(poll_);
      ::close(fd_);
      fd_ = -1;
      uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
      poll_ = nullptr;
      polling_ = false;
      onReadable_.Reset();
      this->Unref();
    } else if (fd_ >= 0) {
      ::close(fd_);
      fd_ = -1;
    }
    return info.Env().Undefined();
  }

  Napi::Value UnrefHandle(const Napi::CallbackInfo& info) {
    if (poll_) uv_unref(reinterpret_cast<uv_handle_t*>(poll_));
    return info.Env().Undefined();
  }

  // How many tx slots a send/write call asks for (0 once closed), bounded by the slots there are.
  uint32_t txCount(const Napi::CallbackInfo& info) {
    if (closed_) return 0;
    uint32_t count = info[0].ToNumber().Uint32Value();
    return count > shared_.slots ? shared_.slots : count;
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    auto o = Napi::Object::New(info.Env());
    o.Set("rxPackets", Napi::Number::New(info.Env(), double(rxPackets_)));
    o.Set("txPackets", Napi::Number::New(info.Env(), double(txPackets_)));
    o.Set("txDropped", Napi::Number::New(info.Env(), double(txDropped_)));
    o.Set("lastError", lastError_.empty() ? info.Env().Null() : Napi::String::New(info.Env(), lastError_));
    return o;
  }
};


// ---- The sleeve's fast path
//
// Frames between local containers and remote peers whose route JavaScript has already decided
// (a known unicast MAC behind a plain hop; a message for us from a known hop, with source MACs the
// endpoint table knows) are carried here, in the readiness callback, without entering JavaScript:
// entering V8 after the loop slept costs tens of microseconds per packet on a small VM, which is
// most of a round trip. Everything else (broadcast, unknown or learnt MACs, encryption, relaying,
// fragments) is left in the slots for JavaScript as before. The packet format is the one in
// datapath/sleeve/packet.ts; the tables come from FastPath.update().
constexpr uint8_t SLEEVE_VERSION = 1, KIND_FRAMES = 1, KIND_FRAGMENT = 2, MAX_HOPS = 16;
constexpr int SLEEVE_HEADER = 8, FRAGMENT_HEADER = 16, MESSAGE_HEADER = 13, VNET_HDR = 10;
constexpr int MAX_UDP_PAYLOAD = 65507;
constexpr uint32_t FLAG_HANDLED = 2;

uint64_t read48(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 6; i++) v = (v << 8) | p[i];
  return v;
}
uint32_t read32(const uint8_t* p) { return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | p[3]; }
void write32(uint8_t* p, uint32_t v) {
  p[0] = v >> 24;
  p[1] = v >> 16;
  p[2] = v >> 8;
  p[3] = v;
}
void write16(uint8_t* p, uint16_t v) {
  p[0] = v >> 8;
  p[1] = v;
}

// ---- Sealing: ChaCha20-Poly1305 per hop, against the OpenSSL that Node itself links and exports.
//
// The format is packet.ts's: a sealed body is a 64-bit big-endian counter, the ciphertext, and a
// 16-byte tag; the nonce is four zero bytes and the counter; a fragment's 8-byte header (id, index,
// count) is authenticated as additional data. One HopCipher per hop holds the only send counter and
// the only replay window for its keys: the fast path and JavaScript both seal and open through it,
// so a counter is never used twice and a packet is never accepted twice, whichever path took it.
constexpr uint32_t SEALED = 0x80, SEAL_COUNTER = 8, SEAL_TAG = 16, SEAL_OVERHEAD = SEAL_COUNTER + SEAL_TAG;
// The slot held a sealed datagram (or a train of them) that the fast path opened in place: each
// segment's plaintext lies after its header and counter, and ends 16 bytes before the segment does.
// A segment that did not open has its version byte zeroed.
constexpr uint32_t FLAG_OPENED = 4;

// Accepts each counter once, within a window behind the highest seen (UDP reorders): packet.ts's ReplayWindow.
class ReplayWindow {
 public:
  static constexpr uint64_t SIZE = 2048;
  bool wouldAccept(uint64_t c) const { return started_ ? c > top_ || (top_ - c < SIZE && !isSet(c)) : true; }
  void accept(uint64_t c) {
    if (!started_ || c > top_) {
      uint64_t gap = started_ ? std::min<uint64_t>(c - top_, SIZE) : SIZE;
      for (uint64_t i = 1; i <= gap; i++) clear(c - i + 1);
      top_ = c;
      started_ = true;
    }
    set(c);
  }

 private:
  uint32_t bits_[SIZE / 32] = {};
  uint64_t top_ = 0;
  bool started_ = false;
  bool isSet(uint64_t c) const { return bits_[(c % SIZE) >> 5] & (1u << (c & 31)); }
  void set(uint64_t c) { bits_[(c % SIZE) >> 5] |= 1u << (c & 31); }
  void clear(uint64_t c) { bits_[(c % SIZE) >> 5] &= ~(1u << (c & 31)); }
};

// Marks HopCipher objects, so FastPath.update takes nothing else for one (an object made from its
// prototype alone, or one from another load of the addon, has no cipher behind it).
constexpr napi_type_tag HOP_CIPHER_TAG = {0x77656674686f7063ULL, 0x6970686572000001ULL};

class HopCipher : public Napi::ObjectWrap<HopCipher> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "HopCipher", {InstanceMethod("seal", &HopCipher::Seal), InstanceMethod("open", &HopCipher::Open)});
  }

  // new HopCipher(sendKey, receiveKey): 32-byte keys from the mesh handshake.
  explicit HopCipher(const Napi::CallbackInfo& info) : Napi::ObjectWrap<HopCipher>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsBuffer() || !info[1].IsBuffer() ||
        info[0].As<Napi::Buffer<uint8_t>>().Length() != 32 || info[1].As<Napi::Buffer<uint8_t>>().Length() != 32) {
      Napi::TypeError::New(env, "new HopCipher(sendKey, receiveKey): two 32-byte Buffers").ThrowAsJavaScriptException();
      return;
    }
    enc_ = EVP_CIPHER_CTX_new();
    dec_ = EVP_CIPHER_CTX_new();
    const EVP_CIPHER* c = EVP_chacha20_poly1305();
    if (!enc_ || !dec_ || !c ||
        EVP_EncryptInit_ex(enc_, c, nullptr, info[0].As<Napi::Buffer<uint8_t>>().Data(), nullptr) != 1 ||
        EVP_DecryptInit_ex(dec_, c, nullptr, info[1].As<Napi::Buffer<uint8_t>>().Data(), nullptr) != 1) {
      Napi::Error::New(env, "OpenSSL has no usable ChaCha20-Poly1305").ThrowAsJavaScriptException();
      return;
    }
    ready_ = true;
    info.This().As<Napi::Object>().TypeTag(&HOP_CIPHER_TAG);
  }
  ~HopCipher() override {
    if (enc_) EVP_CIPHER_CTX_free(enc_);
    if (dec_) EVP_CIPHER_CTX_free(dec_);
  }

  // Seals the plaintext `a` then `b` (either may be empty) to out: counter, ciphertext, tag
  // (SEAL_OVERHEAD + na + nb bytes). `out` may not overlap the plaintext.
  bool seal(uint8_t* out, const uint8_t* aad, int naad, const uint8_t* a, int na, const uint8_t* b, int nb) {
    if (!ready_) return false;
    uint64_t c = counter_++;
    uint8_t nonce[12] = {};
    for (int i = 0; i < 8; i++) nonce[4 + i] = out[i] = uint8_t(c >> (56 - 8 * i));
    int n = 0;
    uint8_t* w = out + SEAL_COUNTER;
    if (EVP_EncryptInit_ex(enc_, nullptr, nullptr, nullptr, nonce) != 1) return false;
    if (naad > 0 && EVP_EncryptUpdate(enc_, nullptr, &n, aad, naad) != 1) return false;
    if (na > 0 && EVP_EncryptUpdate(enc_, w, &n, a, na) != 1) return false;
    w += na;
    if (nb > 0 && EVP_EncryptUpdate(enc_, w, &n, b, nb) != 1) return false;
    w += nb;
    if (EVP_EncryptFinal_ex(enc_, w, &n) != 1) return false;
    return EVP_CIPHER_CTX_ctrl(enc_, EVP_CTRL_AEAD_GET_TAG, SEAL_TAG, w) == 1;
  }

  // Opens the sealed body at d (len bytes: counter, ciphertext, tag) in place: true when it is
  // authentic and its counter new (then remembered); the plaintext is at d + SEAL_COUNTER.
  bool openInPlace(uint8_t* d, uint32_t len, const uint8_t* aad, int naad) { return openTo(d + SEAL_COUNTER, d, len, aad, naad); }

 private:
  EVP_CIPHER_CTX* enc_ = nullptr;
  EVP_CIPHER_CTX* dec_ = nullptr;
  bool ready_ = false;
  uint64_t counter_ = 0;
  ReplayWindow window_;

  // Opens the sealed body at d into out (out == d + SEAL_COUNTER, or a buffer of its own).
  bool openTo(uint8_t* out, const uint8_t* d, uint32_t len, const uint8_t* aad, int naad) {
    if (!ready_ || len < SEAL_OVERHEAD) return false;
    uint64_t c = 0;
    for (int i = 0; i < 8; i++) c = (c << 8) | d[i];
    // A counter already seen is refused before any work.
    if (!window_.wouldAccept(c)) return false;
    uint8_t nonce[12] = {};
    memcpy(nonce + 4, d, 8);
    int n = 0;
    int body = int(len - SEAL_OVERHEAD);
    if (EVP_DecryptInit_ex(dec_, nullptr, nullptr, nullptr, nonce) != 1) return false;
    // The tag is copied: OpenSSL's control call takes a mutable pointer.
    uint8_t tag[SEAL_TAG];
    memcpy(tag, d + len - SEAL_TAG, SEAL_TAG);
    if (EVP_CIPHER_CTX_ctrl(dec_, EVP_CTRL_AEAD_SET_TAG, SEAL_TAG, tag) != 1) return false;
    if (naad > 0 && EVP_DecryptUpdate(dec_, nullptr, &n, aad, naad) != 1) return false;
    if (body > 0 && EVP_DecryptUpdate(dec_, out, &n, d + SEAL_COUNTER, body) != 1) return false;
    if (EVP_DecryptFinal_ex(dec_, out + body, &n) != 1) return false;
    // Only an authentic packet may move the window.
    window_.accept(c);
    return true;
  }

  // Where JavaScript's Buffer arguments are: (out, in, aad?) with out large enough for what the call
  // writes (`extra` bytes more than in, which may be negative). False, with a TypeError pending, when not.
  struct Args {
    uint8_t* out;
    const uint8_t* in;
    size_t nin;
    const uint8_t* aad = nullptr;
    int naad = 0;
  };
  bool args(const Napi::CallbackInfo& info, long extra, const char* usage, Args& a) {
    bool ok = info.Length() >= 2 && info[0].IsBuffer() && info[1].IsBuffer() &&
              (info.Length() < 3 || info[2].IsBuffer() || info[2].IsUndefined());
    if (ok) {
      auto out = info[0].As<Napi::Buffer<uint8_t>>();
      auto in = info[1].As<Napi::Buffer<uint8_t>>();
      a.out = out.Data();
      a.in = in.Data();
      a.nin = in.Length();
      ok = long(in.Length()) + extra >= 0 && out.Length() >= size_t(long(in.Length()) + extra) && in.Length() < (1u << 20);
      if (info.Length() > 2 && info[2].IsBuffer()) {
        auto aad = info[2].As<Napi::Buffer<uint8_t>>();
        a.aad = aad.Data();
        a.naad = int(aad.Length());
        ok = ok && aad.Length() < (1u << 20);
      }
    }
    if (!ok) Napi::TypeError::New(info.Env(), usage).ThrowAsJavaScriptException();
    return ok;
  }

  // seal(out, plain, aad?): writes counter, ciphertext and tag (plain.length + 24 bytes) to out.
  Napi::Value Seal(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Args a;
    if (!args(info, SEAL_OVERHEAD, "seal(out: Buffer, plain: Buffer, aad?: Buffer): out holds plain.length + 24 bytes", a))
      return env.Undefined();
    if (!seal(a.out, a.aad, a.naad, a.in, int(a.nin), nullptr, 0)) {
      Napi::Error::New(env, "sealing failed (OpenSSL)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    return env.Undefined();
  }

  // open(out, sealed, aad?): true when authentic and new, with the plaintext (sealed.length - 24
  // bytes) in out; false for forged, corrupted, replayed or short ones. `sealed` is not changed.
  Napi::Value Open(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    // Too short to be sealed is an answer, not a misuse.
    if (info.Length() >= 2 && info[1].IsBuffer() && info[1].As<Napi::Buffer<uint8_t>>().Length() < SEAL_OVERHEAD)
      return Napi::Boolean::New(env, false);
    Args a;
    if (!args(info, -long(SEAL_OVERHEAD), "open(out: Buffer, sealed: Buffer, aad?: Buffer): out holds sealed.length - 24 bytes", a))
      return env.Undefined();
    return Napi::Boolean::New(env, openTo(a.out, a.in, uint32_t(a.nin), a.aad, a.naad));
  }
};

class FastPath : public Napi::ObjectWrap<FastPath> {
 public:
  struct Route {
    uint32_t addr;
    uint16_t port;
    uint16_t max;  // the largest datagram to this hop
    uint8_t dst[6];
    HopCipher* cipher;  // null: a plain hop
  };
  struct Hop {
    uint32_t addr;
    HopCipher* cipher;
  };
  std::unordered_map<uint64_t, Route> routes;  // by destination MAC
  std::unordered_map<uint64_t, Hop> hops;      // peer id -> underlay address and keys
  std::unordered_set<uint64_t> known;           // MACs the endpoint table knows
  uint8_t self[6] = {};
  uint64_t selfId = 0;
  // Fragment ids are random (a guessable id lets an on-path sender slip a fragment into a message),
  // drawn from a pool refilled by getrandom().
  uint32_t idPool[64] = {};
  size_t idsLeft = 0;
  uint32_t nextFragmentId() {
    if (idsLeft == 0) {
      // Up to 256 bytes never come back short once the pool is seeded; EINTR is retried.
      while (getrandom(idPool, sizeof idPool, 0) != ssize_t(sizeof idPool)) {
      }
      idsLeft = 64;
    }
    return idPool[--idsLeft];
  }
  uint64_t framesOut = 0, bytesOut = 0, framesIn = 0, bytesIn = 0, tapDropped = 0, refused = 0;
  // The hops' ciphers the tables point into, kept alive until the next update.
  std::vector<Napi::ObjectReference> cipherRefs;

  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "FastPath", {InstanceMethod("update", &FastPath::Update), InstanceMethod("stats", &FastPath::Stats)});
  }
  explicit FastPath(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FastPath>(info) {}

  // update(table, ciphers): self(6) | routes: n(4), n x [mac(6) dst(6) addr(4) port(2) max(2) cipher(2)] |
  // hops: n(4), n x [id(6) addr(4) cipher(2)] | known: n(4), n x mac(6). Big-endian; `cipher` indexes
  // the HopCipher array, 0xffff for a plain hop. Replaces all three.
  Napi::Value Update(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsBuffer() || !info[1].IsArray()) {
      Napi::TypeError::New(env, "update(table: Buffer, ciphers: HopCipher[])").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    auto list = info[1].As<Napi::Array>();
    std::vector<Napi::ObjectReference> refs;
    std::vector<HopCipher*> ciphers;
    for (uint32_t i = 0; i < list.Length(); i++) {
      Napi::Value v = list.Get(i);
      HopCipher* c = v.IsObject() && v.As<Napi::Object>().CheckTypeTag(&HOP_CIPHER_TAG) ? HopCipher::Unwrap(v.As<Napi::Object>()) : nullptr;
      if (!c) {
        // A route with no cipher would send an encrypted hop's frames in clear: nothing is installed.
        if (!env.IsExceptionPending()) Napi::TypeError::New(env, "update: ciphers must be HopCipher objects").ThrowAsJavaScriptException();
        return env.Undefined();
      }
      ciphers.push_back(c);
      refs.push_back(Napi::Persistent(v.As<Napi::Object>()));
    }
    auto cipherAt = [&](const uint8_t* q, HopCipher** out) {
      uint16_t k = uint16_t((q[0] << 8) | q[1]);
      if (k == 0xffff) *out = nullptr;
      else if (k < ciphers.size()) *out = ciphers[k];
      else return false;
      return true;
    };
    auto b = info[0].As<Napi::Buffer<uint8_t>>();
    const uint8_t* p = b.Data();
    const uint8_t* end = p + b.Length();
    auto need = [&](size_t n) { return size_t(end - p) >= n; };
    auto bad = [&]() {
      Napi::RangeError::New(env, "fast path table is malformed").ThrowAsJavaScriptException();
      return env.Undefined();
    };
    if (!need(6 + 4)) return bad();
    std::unordered_map<uint64_t, Route> r;
    std::unordered_map<uint64_t, Hop> h;
    std::unordered_set<uint64_t> k;
    uint8_t me[6];
    memcpy(me, p, 6);
    p += 6;
    uint32_t n = read32(p);
    p += 4;
    if (!need(size_t(n) * 22 + 4)) return bad();
    for (uint32_t i = 0; i < n; i++, p += 22) {
      Route x;
      memcpy(x.dst, p + 6, 6);
      x.addr = read32(p + 12);
      x.port = uint16_t((p[16] << 8) | p[17]);
      x.max = uint16_t((p[18] << 8) | p[19]);
      if (!cipherAt(p + 20, &x.cipher)) return bad();
      r[read48(p)] = x;
    }
    n = read32(p);
    p += 4;
    if (!need(size_t(n) * 12 + 4)) return bad();
    for (uint32_t i = 0; i < n; i++, p += 12) {
      Hop x{read32(p + 6), nullptr};
      if (!cipherAt(p + 10, &x.cipher)) return bad();
      h[read48(p)] = x;
    }
    n = read32(p);
    p += 4;
    if (!need(size_t(n) * 6)) return bad();
    for (uint32_t i = 0; i < n; i++, p += 6) k.insert(read48(p));
    memcpy(self, me, 6);
    selfId = read48(me);
    routes.swap(r);
    hops.swap(h);
    known.swap(k);
    cipherRefs.swap(refs);
    return env.Undefined();
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    auto o = Napi::Object::New(info.Env());
    o.Set("framesOut", double(framesOut));
    o.Set("bytesOut", double(bytesOut));
    o.Set("framesIn", double(framesIn));
    o.Set("bytesIn", double(bytesIn));
    o.Set("tapDropped", double(tapDropped));
    o.Set("refused", double(refused));
    return o;
  }
};

// A port's link to the other port of the fast path and to its tables; the references keep both
// alive until reset() (when the port closes).
template <typename P>
struct FastLink {
  P* port = nullptr;
  FastPath* fast = nullptr;
  Napi::ObjectReference portRef, fastRef;

  // Takes (otherPort, fastPath) arguments; throws `usage` and returns false when they are not objects.
  bool set(const Napi::CallbackInfo& info, const char* usage) {
    if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsObject()) {
      Napi::TypeError::New(info.Env(), usage).ThrowAsJavaScriptException();
      return false;
    }
    port = P::Unwrap(info[0].As<Napi::Object>());
    fast = FastPath::Unwrap(info[1].As<Napi::Object>());
    portRef = Napi::Persistent(info[0].As<Napi::Object>());
    fastRef = Napi::Persistent(info[1].As<Napi::Object>());
    return true;
  }

  void reset() {
    port = nullptr;
    fast = nullptr;
    portRef.Reset();
    fastRef.Reset();
  }
};

class TapPort;

class UdpPort : public Port<UdpPort> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "UdpPort",
                       {InstanceMethod("send", &UdpPort::Send), InstanceMethod("close", &UdpPort::Close),
                        InstanceMethod("unref", &UdpPort::UnrefHandle), InstanceMethod("stats", &UdpPort::Stats),
                        InstanceMethod("localPort", &UdpPort::LocalPort), InstanceMethod("features", &UdpPort::Features),
                        InstanceMethod("deliverTo", &UdpPort::DeliverTo)});
  }

  // new UdpPort({address, port, dontFragment, rcvbuf, sndbuf, slots, slotSize, rx, rxMeta, tx, txMeta}, onReadable)
  explicit UdpPort(const Napi::CallbackInfo& info) : Port<UdpPort>(info) {
    Napi::Env env = info.Env();
    if (!takeArgs(info, "new UdpPort(options, onReadable)")) return;
    auto opts = info[0].As<Napi::Object>();
    std::string addr = opts.Has("address") ? opts.Get("address").ToString().Utf8Value() : "0.0.0.0";
    uint32_t port = opts.Has("port") ? opts.Get("port").ToNumber().Uint32Value() : 0;
    // Every address (0.0.0.0 or ::): one dual-stack IPv6 socket, IPv4 as ::ffff:a.b.c.d, or an IPv4
    // one where the kernel has no IPv6. A given address: a socket of its family.
    sockaddr_in sa{};
    sockaddr_in6 sa6{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(uint16_t(port));
    sa6.sin6_family = AF_INET6;
    sa6.sin6_port = htons(uint16_t(port));
    bool any = addr == "0.0.0.0" || addr == "::";
    bool v4 = !any && inet_pton(AF_INET, addr.c_str(), &sa.sin_addr) == 1;
    bool v6 = !any && !v4 && inet_pton(AF_INET6, addr.c_str(), &sa6.sin6_addr) == 1;
    if (!any && !v4 && !v6) {
      Napi::Error::New(env, "not an IP address: " + addr).ThrowAsJavaScriptException();
      return;
    }
    bool df = opts.Has("dontFragment") && opts.Get("dontFragment").ToBoolean().Value();
    gro_ = opts.Has("gro") && opts.Get("gro").ToBoolean().Value();
    int bufs[2] = {opts.Has("rcvbuf") ? opts.Get("rcvbuf").ToNumber().Int32Value() : 0,
                   opts.Has("sndbuf") ? opts.Get("sndbuf").ToNumber().Int32Value() : 0};
    msgs_.resize(shared_.slots);
    iovs_.resize(shared_.slots);
    addrs_.resize(shared_.slots);
    tx_.resize(shared_.slots);
    rxCtl_.resize(shared_.slots);
    openAndPoll(info, [&]() -> std::string {
      family_ = v4 ? AF_INET : AF_INET6;
      fd_ = socket(family_, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (fd_ < 0 && any && errno == EAFNOSUPPORT) {
        family_ = AF_INET;
        fd_ = socket(family_, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      }
      if (fd_ < 0) return errnoText("socket", errno);
      if (family_ == AF_INET6) {
        int only = v6 ? 1 : 0;
        setsockopt(fd_, IPPROTO_IPV6, IPV6_V6ONLY, &only, sizeof only);
        int pmtu6 = df ? IPV6_PMTUDISC_PROBE : IPV6_PMTUDISC_DONT;
        setsockopt(fd_, IPPROTO_IPV6, IPV6_MTU_DISCOVER, &pmtu6, sizeof pmtu6);
      }
      // Data may be fragmented by IP; probes set DF without trusting the kernel's PMTU cache. (On the
      // dual-stack socket this is what its IPv4 datagrams do.)
      int pmtu = df ? IP_PMTUDISC_PROBE : IP_PMTUDISC_DONT;
      setsockopt(fd_, IPPROTO_IP, IP_MTU_DISCOVER, &pmtu, sizeof pmtu);
      // Whether this kernel takes segment trains (UDP_SEGMENT, Linux 4.18): a size of 0 changes nothing.
      int zero = 0;
      gso_ = setsockopt(fd_, IPPROTO_UDP, UDP_SEGMENT, &zero, sizeof zero) == 0;
      // Segment trains sent with UDP_SEGMENT may arrive still joined; each says its segment size.
      if (gro_) {
        int one = 1;
        if (setsockopt(fd_, IPPROTO_UDP, UDP_GRO, &one, sizeof one) != 0) gro_ = false;
      }
      for (int k = 0; k < 2; k++) {
        if (bufs[k] <= 0) continue;
        // FORCE variants pass the system limit (we are root); fall back to the plain ones.
        if (setsockopt(fd_, SOL_SOCKET, k == 0 ? SO_RCVBUFFORCE : SO_SNDBUFFORCE, &bufs[k], sizeof bufs[k]) != 0)
          setsockopt(fd_, SOL_SOCKET, k == 0 ? SO_RCVBUF : SO_SNDBUF, &bufs[k], sizeof bufs[k]);
      }
      int bound = family_ == AF_INET ? bind(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa)
                                     : bind(fd_, reinterpret_cast<sockaddr*>(&sa6), sizeof sa6);
      if (bound != 0) {
        int e = errno;
        ::close(fd_);
        fd_ = -1;
        return errnoText(("bind " + addr + ":" + std::to_string(port)).c_str(), e);
      }
      return "";
    });
  }

  int readBatch() {
    for (uint32_t i = 0; i < shared_.slots; i++) {
      iovs_[i] = {shared_.rx + size_t(i) * shared_.slotSize, shared_.slotSize};
      msgs_[i].msg_hdr = {};
      msgs_[i].msg_hdr.msg_iov = &iovs_[i];
      msgs_[i].msg_hdr.msg_iovlen = 1;
      msgs_[i].msg_hdr.msg_name = &addrs_[i];
      msgs_[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage);
      if (gro_) {
        msgs_[i].msg_hdr.msg_control = rxCtl_[i].data();
        msgs_[i].msg_hdr.msg_controllen = rxCtl_[i].size();
      }
    }
    int n;
    // EINTR, and ICMP errors of earlier sends (ECONNREFUSED...), are reported here: read on.
    for (int tries = 0; tries < 8; tries++) {
      n = recvmmsg(fd_, msgs_.data(), shared_.slots, MSG_DONTWAIT, nullptr);
      if (n >= 0 || errno == EAGAIN || errno == EWOULDBLOCK) break;
      if (errno != EINTR) lastError_ = errnoText("recvmmsg", errno);
    }
    if (n < 0) return 0;
    int handled = 0;
    for (int i = 0; i < n; i++) {
      uint32_t* m = shared_.rxMeta + i * META;
      m[0] = msgs_[i].msg_len;
      m[1] = fromSockaddr(addrs_[i]);
      // The port is at the same place in both families' socket addresses.
      m[2] = ntohs(reinterpret_cast<const sockaddr_in*>(&addrs_[i])->sin_port);
      m[3] = (msgs_[i].msg_hdr.msg_flags & MSG_TRUNC) ? FLAG_TRUNCATED : 0;
      if (gro_) {
        for (cmsghdr* c = CMSG_FIRSTHDR(&msgs_[i].msg_hdr); c; c = CMSG_NXTHDR(&msgs_[i].msg_hdr, c)) {
          if (c->cmsg_level == IPPROTO_UDP && c->cmsg_type == UDP_GRO) {
            int seg;
            memcpy(&seg, CMSG_DATA(c), sizeof seg);
            m[3] |= uint32_t(seg) << 8;
          }
        }
      }
      if (!link_.fast || (m[3] & FLAG_TRUNCATED)) continue;
      uint8_t* d = shared_.rx + size_t(i) * shared_.slotSize;
      uint32_t seg = m[3] >> 8;
      if (openSealed(d, m[0], seg ? seg : m[0], m[1])) m[3] |= FLAG_OPENED;
      if (seg == 0 && fastDeliver(d, m[0], m[1])) {
        m[3] = FLAG_HANDLED;
        handled++;
      }
    }
    forJs_ = handled == n ? 0 : n;
    return n;
  }

  // send(count): sends tx slots 0..count-1 (length, address, port from txMeta). Returns how many went.
  Napi::Value Send(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint32_t count = txCount(info);
    for (uint32_t i = 0; i < count; i++) {
      uint32_t* m = shared_.txMeta + i * META;
      uint32_t len = m[0] > shared_.slotSize ? shared_.slotSize : m[0];
      tx_.set(i, shared_.tx + size_t(i) * shared_.slotSize, len, m[1], uint16_t(m[2]), uint16_t(m[3] >> 8), family_);
    }
    uint32_t sent = tx_.send(fd_, count, lastError_, "sendmmsg");
    txDropped_ += count - sent;
    txPackets_ += sent;
    return Napi::Number::New(env, sent);
  }

  int fd() const { return fd_; }
  int family() const { return family_; }
  bool gso() const { return gso_; }
  // Closing drops the links to the other port, so neither keeps the other alive.
  void unlink() { link_.reset(); }

  // deliverTo(tap, fastPath): messages for us that the fast path can take go straight into the TAP.
  Napi::Value DeliverTo(const Napi::CallbackInfo& info);
  bool fastDeliver(const uint8_t* d, uint32_t len, uint32_t from);
  bool openSealed(uint8_t* d, uint32_t len, uint32_t seg, uint32_t from);

  // What the socket can do: gso (send segment trains), gro (receive them joined).
  Napi::Value Features(const Napi::CallbackInfo& info) {
    auto o = Napi::Object::New(info.Env());
    o.Set("gso", Napi::Boolean::New(info.Env(), gso_));
    o.Set("gro", Napi::Boolean::New(info.Env(), gro_));
    o.Set("ipv6", Napi::Boolean::New(info.Env(), family_ == AF_INET6));
    return o;
  }

  Napi::Value LocalPort(const Napi::CallbackInfo& info) {
    sockaddr_storage sa{};
    socklen_t len = sizeof sa;
    if (fd_ < 0 || getsockname(fd_, reinterpret_cast<sockaddr*>(&sa), &len) != 0) return info.Env().Null();
    return Napi::Number::New(info.Env(), ntohs(reinterpret_cast<const sockaddr_in*>(&sa)->sin_port));
  }

 private:
  std::vector<mmsghdr> msgs_;
  std::vector<iovec> iovs_;
  std::vector<sockaddr_storage> addrs_;
  SendBatch tx_;
  int family_ = AF_INET;
  std::vector<std::array<char, CMSG_SPACE(sizeof(int))>> rxCtl_;
  bool gro_ = false, gso_ = false;
  FastLink<TapPort> link_;
};

class TapPort : public Port<TapPort> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "TapPort",
                       {InstanceMethod("write", &TapPort::Write), InstanceMethod("close", &TapPort::Close),
                        InstanceMethod("forwardTo", &TapPort::ForwardTo),
                        InstanceMethod("unref", &TapPort::UnrefHandle), InstanceMethod("stats", &TapPort::Stats)});
  }

  // new TapPort({name, vnetHdr, slots, slotSize, rx, rxMeta, tx, txMeta}, onReadable)
  explicit TapPort(const Napi::CallbackInfo& info) : Port<TapPort>(info) {
    Napi::Env env = info.Env();
    if (!takeArgs(info, "new TapPort(options, onReadable)")) return;
    auto opts = info[0].As<Napi::Object>();
    std::string name = opts.Get("name").ToString().Utf8Value();
    if (name.empty() || name.size() >= IFNAMSIZ) {
      Napi::Error::New(env, "bad interface name: " + name).ThrowAsJavaScriptException();
      return;
    }
    bool vnet = opts.Has("vnetHdr") && opts.Get("vnetHdr").ToBoolean().Value();
    openAndPoll(info, [&]() -> std::string {
      fd_ = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
      if (fd_ < 0) return errnoText("open /dev/net/tun", errno);
      ifreq ifr{};
      strncpy(ifr.ifr_name, name.c_str(), IFNAMSIZ - 1);
      ifr.ifr_flags = IFF_TAP | IFF_NO_PI | (vnet ? IFF_VNET_HDR : 0);
      if (ioctl(fd_, TUNSETIFF, &ifr) != 0) return errnoText(("TUNSETIFF " + name).c_str(), errno);
      if (!vnet) return "";
      int hdr = 10;  // struct virtio_net_hdr, without the mergeable-buffers count
      if (ioctl(fd_, TUNSETVNETHDRSZ, &hdr) != 0) return errnoText("TUNSETVNETHDRSZ", errno);
      // With offloads on, the kernel hands us TSO super-frames (up to 64 KB) with a header saying how to cut them.
      unsigned offload = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
      if (ioctl(fd_, TUNSETOFFLOAD, offload) != 0) return errnoText("TUNSETOFFLOAD", errno);
      return "";
    });
  }

  int readBatch() {
    int n = 0, total = 0;
    // Frames the fast path takes do not use up slots; a bound keeps a flood from holding the loop.
    while (uint32_t(n) < shared_.slots && total < 4 * int(shared_.slots)) {
      ssize_t r = read(fd_, shared_.rx + size_t(n) * shared_.slotSize, shared_.slotSize);
      if (r < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) lastError_ = errnoText("read tap", errno);
        break;
      }
      total++;
      if (link_.fast && fastForward(shared_.rx + size_t(n) * shared_.slotSize, uint32_t(r))) continue;
      uint32_t* m = shared_.rxMeta + n * META;
      m[0] = uint32_t(r);
      m[1] = m[2] = 0;
      m[3] = 0;
      n++;
    }
    flushFast();
    forJs_ = n;
    return total;
  }

  int fd() const { return fd_; }
  void unlink() { link_.reset(); }

  // forwardTo(udp, fastPath): frames to known unicast MACs behind plain hops go out without JavaScript.
  Napi::Value ForwardTo(const Napi::CallbackInfo& info) {
    if (link_.set(info, "forwardTo(udpPort, fastPath)") && out_.empty()) {
      out_.resize(size_t(FAST_SLOTS) * FAST_SLOT_SIZE);
      outBatch_.resize(FAST_SLOTS);
    }
    return info.Env().Undefined();
  }

 private:
  static constexpr int FAST_SLOTS = 16;
  static constexpr size_t FAST_SLOT_SIZE = 65536 + 64;
  FastLink<UdpPort> link_;
  std::vector<uint8_t> out_;
  SendBatch outBatch_;
  int queued_ = 0;

  uint8_t* outSlot() { return out_.data() + size_t(queued_) * FAST_SLOT_SIZE; }

  // Queues out slot `queued_` (len bytes; a train of `segment`-byte datagrams when segment > 0).
  void commitFast(uint32_t len, const FastPath::Route& r, uint16_t segment) {
    UdpPort* udp = link_.port;
    outBatch_.set(queued_, outSlot(), len, r.addr, r.port, segment, udp ? udp->family() : AF_INET);
    if (++queued_ >= FAST_SLOTS) flushFast();
  }

  void flushFast() {
    UdpPort* udp = link_.port;
    uint32_t sent = udp && udp->fd() >= 0 ? outBatch_.send(udp->fd(), queued_, lastError_, "sendmmsg (fast path)") : 0;
    txDropped_ += queued_ - sent;
    queued_ = 0;
  }

  // A frame that could not be sealed is dropped (JavaScript's sealing would fail the same way).
  bool sealFailed() {
    lastError_ = "sealing failed (OpenSSL)";
    txDropped_++;
    return true;
  }

  // Takes the frame (virtio header + Ethernet) if its route is known; false leaves it to JavaScript.
  // On an encrypted hop the message, or each fragment of it, is sealed on its way into the slot.
  bool fastForward(const uint8_t* f, uint32_t len) {
    UdpPort* udp = link_.port;
    FastPath* fast = link_.fast;
    if (len < uint32_t(VNET_HDR + 14) || (f[VNET_HDR] & 1) || !udp || udp->fd() < 0) return false;
    auto it = fast->routes.find(read48(f + VNET_HDR));
    if (it == fast->routes.end()) return false;
    const FastPath::Route& r = it->second;
    HopCipher* cipher = r.cipher;
    uint32_t seal = cipher ? SEAL_OVERHEAD : 0;
    uint8_t sealedBit = cipher ? SEALED : 0;
    uint32_t message = MESSAGE_HEADER + 4 + len;
    uint8_t prefix[MESSAGE_HEADER + 4];
    memcpy(prefix, fast->self, 6);
    memcpy(prefix + 6, r.dst, 6);
    prefix[12] = MAX_HOPS;
    write32(prefix + 13, len);
    if (SLEEVE_HEADER + message + seal <= r.max) {
      uint8_t* s = outSlot();
      s[0] = SLEEVE_VERSION;
      s[1] = KIND_FRAMES | sealedBit;
      memcpy(s + 2, fast->self, 6);
      if (cipher) {
        if (!cipher->seal(s + SLEEVE_HEADER, nullptr, 0, prefix, sizeof prefix, f, int(len))) return sealFailed();
      } else {
        memcpy(s + SLEEVE_HEADER, prefix, sizeof prefix);
        memcpy(s + SLEEVE_HEADER + sizeof prefix, f, len);
      }
      commitFast(SLEEVE_HEADER + message + seal, r, 0);
    } else {
      // In fragments, as trains of `max`-byte datagrams (the kernel cuts them: UDP GSO).
      if (!udp->gso() || r.max <= FRAGMENT_HEADER + seal) return false;
      uint32_t chunk = r.max - FRAGMENT_HEADER - seal;
      uint32_t count = (message + chunk - 1) / chunk;
      if (count > 0xffff) return false;  // the header has 16 bits for it (not with any path MTU weft uses)
      uint32_t perSlot = std::min<uint32_t>(64, MAX_UDP_PAYLOAD / r.max);
      uint32_t id = 0x80000000u | (fast->nextFragmentId() & 0x7fffffffu);  // JavaScript's ids have the top bit clear
      for (uint32_t i = 0; i < count;) {
        uint8_t* s = outSlot();
        uint32_t o = 0;
        for (uint32_t last = std::min(count, i + perSlot); i < last; i++) {
          uint32_t from = i * chunk, to = std::min(message, from + chunk);
          s[o] = SLEEVE_VERSION;
          s[o + 1] = KIND_FRAGMENT | sealedBit;
          memcpy(s + o + 2, fast->self, 6);
          write32(s + o + SLEEVE_HEADER, id);
          write16(s + o + SLEEVE_HEADER + 4, uint16_t(i));
          write16(s + o + SLEEVE_HEADER + 6, uint16_t(count));
          // The message is the prefix, then the frame: this fragment's part of each.
          uint32_t inPrefix = from < sizeof prefix ? std::min<uint32_t>(to, sizeof prefix) - from : 0;
          const uint8_t* a = prefix + (inPrefix ? from : 0);
          const uint8_t* b = to > sizeof prefix ? f + (from + inPrefix - sizeof prefix) : f;
          uint32_t inFrame = to - from - inPrefix;
          uint8_t* w = s + o + FRAGMENT_HEADER;
          if (cipher) {
            // The fragment header is authenticated with it.
            if (!cipher->seal(w, s + o + SLEEVE_HEADER, 8, a, int(inPrefix), b, int(inFrame))) return sealFailed();
          } else {
            memcpy(w, a, inPrefix);
            memcpy(w + inPrefix, b, inFrame);
          }
          o += FRAGMENT_HEADER + (to - from) + seal;
        }
        commitFast(o, r, r.max);
      }
    }
    fast->framesOut++;
    fast->bytesOut += len - VNET_HDR;
    return true;
  }
 public:

  // write(count): writes tx slots 0..count-1 as frames. Returns how many went.
  Napi::Value Write(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint32_t count = txCount(info);
    uint32_t sent = 0;
    for (uint32_t i = 0; i < count; i++) {
      uint32_t len = shared_.txMeta[i * META];
      if (len > shared_.slotSize) len = shared_.slotSize;
      ssize_t r;
      do r = write(fd_, shared_.tx + size_t(i) * shared_.slotSize, len);
      while (r < 0 && errno == EINTR);
      if (r < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) lastError_ = errnoText("write tap", errno);
        txDropped_++;
        continue;
      }
      sent++;
    }
    txPackets_ += sent;
    return Napi::Number::New(env, sent);
  }
};

Napi::Value UdpPort::DeliverTo(const Napi::CallbackInfo& info) {
  link_.set(info, "deliverTo(tapPort, fastPath)");
  return info.Env().Undefined();
}

// Opens in place every sealed datagram of the slot at d (len bytes; a train of `seg`-byte segments
// when joined by GRO) that comes from a known encrypted hop at its own address. A sealed segment
// that does not open (unknown or plain hop, wrong address, forged, corrupted, replayed, too short)
// has its version byte zeroed and is counted as refused: nothing of it reaches JavaScript. True when
// the slot held a sealed segment, so JavaScript reads the opened ones as plaintext (FLAG_OPENED).
bool UdpPort::openSealed(uint8_t* d, uint32_t len, uint32_t seg, uint32_t from) {
  FastPath* fast = link_.fast;
  bool any = false;
  for (uint32_t o = 0; o < len; o += seg) {
    uint8_t* p = d + o;
    uint32_t n = std::min(seg, len - o);
    uint8_t kind = p[1] & ~SEALED;
    // Only messages and fragments are sealed; anything else (a probe) is JavaScript's to judge.
    if (n < uint32_t(SLEEVE_HEADER) || p[0] != SLEEVE_VERSION || !(p[1] & SEALED) || (kind != KIND_FRAMES && kind != KIND_FRAGMENT))
      continue;
    any = true;
    auto hop = fast->hops.find(read48(p + 2));
    HopCipher* cipher = hop != fast->hops.end() && hop->second.addr == from ? hop->second.cipher : nullptr;
    bool ok = false;
    if (cipher && kind == KIND_FRAMES)
      ok = cipher->openInPlace(p + SLEEVE_HEADER, n - SLEEVE_HEADER, nullptr, 0);
    else if (cipher && kind == KIND_FRAGMENT && n >= uint32_t(FRAGMENT_HEADER))
      ok = cipher->openInPlace(p + FRAGMENT_HEADER, n - FRAGMENT_HEADER, p + SLEEVE_HEADER, 8);
    if (!ok) {
      p[0] = 0;
      fast->refused++;
    }
  }
  return any;
}

// Takes a message for us from a known hop, at its own address, whose frames are whole and come from
// MACs the endpoint table knows (so nothing is to be learnt): a plain one from a plain hop, or one
// openSealed() opened from an encrypted hop. False leaves it to JavaScript, which also counts what is
// refused or malformed.
bool UdpPort::fastDeliver(const uint8_t* d, uint32_t len, uint32_t from) {
  FastPath* fast = link_.fast;
  int tapFd = link_.port ? link_.port->fd() : -1;
  if (tapFd < 0 || len < uint32_t(SLEEVE_HEADER + MESSAGE_HEADER) || d[0] != SLEEVE_VERSION) return false;
  bool sealed = d[1] == (KIND_FRAMES | SEALED);
  if (!sealed && d[1] != KIND_FRAMES) return false;
  auto hop = fast->hops.find(read48(d + 2));
  // The hop must be what the packet says: plain packets only from plain hops, sealed (and opened) only from encrypted ones.
  if (hop == fast->hops.end() || hop->second.addr != from || (hop->second.cipher != nullptr) != sealed) return false;
  if (sealed && len < uint32_t(SLEEVE_HEADER + SEAL_OVERHEAD + MESSAGE_HEADER)) return false;
  const uint8_t* m = d + SLEEVE_HEADER + (sealed ? SEAL_COUNTER : 0);
  uint32_t end = len - SLEEVE_HEADER - (sealed ? SEAL_OVERHEAD : 0);
  if (read48(m + 6) != fast->selfId) return false;
  for (uint32_t o = MESSAGE_HEADER; o < end;) {
    if (o + 4 > end) return false;
    uint32_t flen = read32(m + o);
    if (flen < uint32_t(VNET_HDR + 14) || flen > end - o - 4) return false;
    if (!fast->known.count(read48(m + o + 4 + VNET_HDR + 6))) return false;
    o += 4 + flen;
  }
  for (uint32_t o = MESSAGE_HEADER; o < end;) {
    uint32_t flen = read32(m + o);
    ssize_t r;
    do r = write(tapFd, m + o + 4, flen);
    while (r < 0 && errno == EINTR);
    if (r < 0) fast->tapDropped++;
    else {
      fast->framesIn++;
      fast->bytesIn += flen - VNET_HDR;
    }
    o += 4 + flen;
  }
  return true;
}

// addressHandle(ipv6Text): the 32-bit word slot metadata carries for an IPv6 underlay address (an
// IPv4-mapped one gives its IPv4 address). Throws when the text is not IPv6 or the table is full.
Napi::Value AddressHandle(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) {
    Napi::TypeError::New(env, "addressHandle(ipv6Address)").ThrowAsJavaScriptException();
    return env.Null();
  }
  std::string text = info[0].As<Napi::String>().Utf8Value();
  in6_addr a{};
  if (inet_pton(AF_INET6, text.c_str(), &a) != 1) {
    Napi::Error::New(env, "not an IPv6 address: " + text).ThrowAsJavaScriptException();
    return env.Null();
  }
  sockaddr_storage ss{};
  ss.ss_family = AF_INET6;
  reinterpret_cast<sockaddr_in6*>(&ss)->sin6_addr = a;
  uint32_t h = IN6_IS_ADDR_V4MAPPED(&a) ? fromSockaddr(ss) : ipv6Handles().add(a);
  if (h == 0) {
    Napi::Error::New(env, "no handle for " + text + " (too many IPv6 underlay addresses)").ThrowAsJavaScriptException();
    return env.Null();
  }
  return Napi::Number::New(env, h);
}

// releaseAddressHandle(handle): no hop has that IPv6 address any more; its handle may be given again.
Napi::Value ReleaseAddressHandle(const Napi::CallbackInfo& info) {
  if (info.Length() >= 1 && info[0].IsNumber()) ipv6Handles().release(info[0].As<Napi::Number>().Uint32Value());
  return info.Env().Undefined();
}

// netlinkRequest(protocol, message, netns?): sends one netlink request (a whole message, header and
// payload; its sequence number and port are set here) to the kernel on a new socket of that protocol
// in this network namespace (or the one at path `netns`: tests), and returns the answer's messages up
// to its end (a dump's NLMSG_DONE, included, since it may carry NLM_F_DUMP_INTR; or the
// acknowledgement), concatenated, each padded as netlink aligns them. Throws the kernel's error, with
// its number as `errno`. It is synchronous: the kernel answers within the system calls (a dump as the
// caller reads), so the router reads small kernel state, such as the heartbeat counters each second,
// without a process or a wake-up of its own. Reading gives up 1 s after the request was sent; sending
// waits as long as the kernel does (rtnetlink requests take its rtnl lock, as `ip` does; a dump's
// later parts are built within the reads, which the limit does not cut short either).
Napi::Value NetlinkRequest(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsBuffer()) {
    Napi::TypeError::New(env, "netlinkRequest(protocol, message)").ThrowAsJavaScriptException();
    return env.Null();
  }
  auto message = info[1].As<Napi::Buffer<uint8_t>>();
  if (message.Length() < sizeof(nlmsghdr) || message.Length() > 65536) {
    Napi::RangeError::New(env, "netlinkRequest: a message is 16 bytes to 64 KiB").ThrowAsJavaScriptException();
    return env.Null();
  }
  std::vector<uint8_t> request(message.Data(), message.Data() + message.Length());
  auto* head = reinterpret_cast<nlmsghdr*>(request.data());
  // A sequence number of its own per request: an answer is taken only from the kernel and for it.
  static uint32_t nextSeq = uint32_t(getpid()) * 2654435761u;
  const uint32_t seq = ++nextSeq;
  head->nlmsg_len = uint32_t(request.size());
  head->nlmsg_seq = seq;
  head->nlmsg_pid = 0;
  int protocol = info[0].As<Napi::Number>().Int32Value();
  std::string netns = info.Length() > 2 && info[2].IsString() ? info[2].As<Napi::String>().Utf8Value() : "";
  int fd = -1;
  int code = 0;
  std::string err = inNetns(netns, [&]() -> std::string {
    fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, protocol);
    if (fd < 0) code = errno;
    return fd < 0 ? errnoText("netlink socket", errno) : "";
  });
  auto fail = [&](const std::string& text, int number) {
    Napi::Error e = Napi::Error::New(env, text);
    if (number) e.Set("errno", Napi::Number::New(env, number));
    e.ThrowAsJavaScriptException();
    return env.Null();
  };
  if (fd < 0) return fail(err, code);
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  std::vector<uint8_t> answer;
  if (sendto(fd, request.data(), request.size(), 0, reinterpret_cast<sockaddr*>(&kernel), sizeof kernel) !=
      ssize_t(request.size())) {
    code = errno;
    err = errnoText("netlink send", errno);
  }
  // The reading limit counts from here: the kernel may have built the answer within sendto (waiting
  // for its lock as long as it takes), and that answer is read, however long it took.
  timespec start{};
  clock_gettime(CLOCK_MONOTONIC, &start);
  const auto elapsedUs = [&]() {
    timespec now{};
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - start.tv_sec) * 1000000L + (now.tv_nsec - start.tv_nsec) / 1000;
  };
  constexpr long LIMIT_US = 1000000;
  std::vector<uint8_t> buf(32768);
  for (bool done = !err.empty(); !done;) {
    long left = LIMIT_US - elapsedUs();
    timeval limit{left / 1000000, left % 1000000};
    if (left <= 0 || setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit) != 0) {
      err = left <= 0 ? "netlink: no answer within 1 s" : errnoText("netlink SO_RCVTIMEO", errno);
      break;
    }
    // The next datagram's size first, so that a large one is read whole.
    ssize_t n = recv(fd, buf.data(), buf.size(), MSG_PEEK | MSG_TRUNC);
    if (n > ssize_t(buf.size())) buf.resize(size_t(n));
    sockaddr_nl from{};
    socklen_t fromLen = sizeof from;
    if (n >= 0) n = recvfrom(fd, buf.data(), buf.size(), 0, reinterpret_cast<sockaddr*>(&from), &fromLen);
    if (n < 0) {
      if (errno == EINTR) continue;
      code = errno == EAGAIN || errno == EWOULDBLOCK ? 0 : errno;
      err = code == 0 ? "netlink: no answer within 1 s" : errnoText("netlink receive", errno);
      break;
    }
    if (n == 0) {
      err = "netlink: the answer ended early";
      break;
    }
    if (from.nl_pid != 0) continue;  // not the kernel's
    int rest = int(n);
    for (auto* m = reinterpret_cast<nlmsghdr*>(buf.data()); !done && NLMSG_OK(m, rest); m = NLMSG_NEXT(m, rest)) {
      if (m->nlmsg_seq != seq) continue;
      if (m->nlmsg_type == NLMSG_ERROR || m->nlmsg_type == NLMSG_DONE) {
        // Both carry an error number first: 0 for an acknowledgement or a dump that ended well.
        int e = 0;
        if (m->nlmsg_len >= NLMSG_LENGTH(sizeof(int))) memcpy(&e, NLMSG_DATA(m), sizeof e);
        if (e < 0) {
          code = -e;
          err = errnoText("netlink", -e);
        }
        done = true;
        if (m->nlmsg_type == NLMSG_ERROR) break;
      }
      // Copied padded to netlink's alignment, whatever the datagram's end: the reader steps by it.
      auto* bytes = reinterpret_cast<uint8_t*>(m);
      size_t len = std::min<size_t>(m->nlmsg_len, size_t(rest));
      answer.insert(answer.end(), bytes, bytes + len);
      answer.resize(answer.size() + (NLMSG_ALIGN(len) - len), 0);
      if (!(m->nlmsg_flags & NLM_F_MULTI)) done = true;
    }
  }
  ::close(fd);
  if (!err.empty()) return fail(err, code);
  return Napi::Buffer<uint8_t>::Copy(env, answer.data(), answer.size());
}

// ---- Kernel change notifications
//
// A netlink socket joined to multicast groups (rtnetlink's links, nftables' changes): the kernel
// writes a message to it for every change, and the router checks what it keeps in the kernel when
// one comes instead of every few seconds. Each readiness callback reads what is queued (at most 256
// messages; the poll is level-triggered, so the rest comes next turn) and tells JavaScript once that
// something changed, and whether messages were lost (the socket overran: a change all the same).
// Only the kernel's messages count (sender port 0). With `nftTables`, an nftables message counts only
// if it names one of those tables (hosts where Docker or kube-proxy rewrite their own tables all the
// time need not check weft's each time); the end of a transaction (NEWGEN) names none and is skipped.
// The nftables messages whose first attribute (type 1) is their table's name: every object's, made
// or removed. Any other message counts as a change, but for the end of a transaction (NEWGEN).
bool nameIsFirstAttribute(uint8_t type) {
  switch (type) {
    case NFT_MSG_NEWTABLE: case NFT_MSG_DELTABLE: case NFT_MSG_NEWCHAIN: case NFT_MSG_DELCHAIN:
    case NFT_MSG_NEWRULE: case NFT_MSG_DELRULE: case NFT_MSG_NEWSET: case NFT_MSG_DELSET:
    case NFT_MSG_NEWSETELEM: case NFT_MSG_DELSETELEM: case NFT_MSG_NEWOBJ: case NFT_MSG_DELOBJ:
    case NFT_MSG_NEWFLOWTABLE: case NFT_MSG_DELFLOWTABLE:
      return true;
    default:
      return false;
  }
}

class NetlinkWatch : public Napi::ObjectWrap<NetlinkWatch> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "NetlinkWatch",
                       {InstanceMethod("close", &NetlinkWatch::Close), InstanceMethod("unref", &NetlinkWatch::UnrefHandle),
                        InstanceMethod("stats", &NetlinkWatch::Stats)});
  }

  // (protocol, groups: number[], onChange(overrun: boolean), options?: { netns?: string, nftTables?: string[] })
  explicit NetlinkWatch(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NetlinkWatch>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 3 || !info[0].IsNumber() || !info[1].IsArray() || !info[2].IsFunction() ||
        (info.Length() > 3 && !info[3].IsUndefined() && !info[3].IsObject())) {
      Napi::TypeError::New(env, "new NetlinkWatch(protocol, groups, onChange, { netns?, nftTables? })")
          .ThrowAsJavaScriptException();
      return;
    }
    int protocol = info[0].As<Napi::Number>().Int32Value();
    auto list = info[1].As<Napi::Array>();
    std::vector<int> groups;
    for (uint32_t i = 0; i < list.Length(); i++) {
      Napi::Value g = list.Get(i);
      int n = g.IsNumber() ? g.As<Napi::Number>().Int32Value() : 0;
      if (n < 1 || n > 1024) {
        Napi::RangeError::New(env, "NetlinkWatch: a group is a number from 1 to 1024").ThrowAsJavaScriptException();
        return;
      }
      groups.push_back(n);
    }
    std::string netns;
    if (info.Length() > 3 && info[3].IsObject()) {
      auto opts = info[3].As<Napi::Object>();
      if (opts.Has("netns") && opts.Get("netns").IsString()) netns = opts.Get("netns").As<Napi::String>().Utf8Value();
      if (opts.Has("nftTables") && opts.Get("nftTables").IsArray()) {
        auto tables = opts.Get("nftTables").As<Napi::Array>();
        for (uint32_t i = 0; i < tables.Length(); i++) tables_.push_back(tables.Get(i).ToString().Utf8Value());
        filterTables_ = true;
      }
    }
    int code = 0;
    std::string err = inNetns(netns, [&]() -> std::string {
      fd_ = socket(AF_NETLINK, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, protocol);
      if (fd_ < 0) return code = errno, errnoText("netlink socket", errno);
      sockaddr_nl self{};
      self.nl_family = AF_NETLINK;
      if (bind(fd_, reinterpret_cast<sockaddr*>(&self), sizeof self) != 0) return code = errno, errnoText("netlink bind", errno);
      for (int g : groups)
        if (setsockopt(fd_, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &g, sizeof g) != 0)
          return code = errno, errnoText(("netlink group " + std::to_string(g)).c_str(), errno);
      // Room for a burst (a few hundred containers' links at once) before messages are lost; root may
      // go past rmem_max. Not having it only means an overrun sooner, which counts as a change.
      int size = 1 << 20;
      if (setsockopt(fd_, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) != 0)
        setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
      return "";
    });
    if (!err.empty()) {
      if (fd_ >= 0) ::close(fd_);
      fd_ = -1;
      Napi::Error e = Napi::Error::New(env, err);
      if (code) e.Set("errno", Napi::Number::New(env, code));
      e.ThrowAsJavaScriptException();
      return;
    }
    poll_ = newPoll(env, fd_, this);
    if (!poll_) {
      ::close(fd_);
      fd_ = -1;
      return;
    }
    onChange_ = Napi::Persistent(info[2].As<Napi::Function>());
    Ref();  // alive while watching, even if JavaScript drops it
    int started = uv_poll_start(poll_, UV_READABLE, OnReadable);
    if (started != 0) fail(std::string("poll: ") + uv_strerror(started));
  }

  ~NetlinkWatch() override {
    if (fd_ >= 0 && !poll_) ::close(fd_);
  }

 private:
  int fd_ = -1;
  uv_poll_t* poll_ = nullptr;
  Napi::FunctionReference onChange_;
  bool filterTables_ = false;
  std::vector<std::string> tables_;
  uint64_t messages_ = 0, overruns_ = 0, ignored_ = 0;
  // The watch hears nothing more (its poll failed): the caller checks on a timer instead.
  bool failed_ = false;
  std::string lastError_;

  void fail(const std::string& why) {
    failed_ = true;
    lastError_ = why;
    if (poll_) uv_poll_stop(poll_);
  }

  static void OnReadable(uv_poll_t* h, int status, int) {
    auto self = static_cast<NetlinkWatch*>(h->data);
    bool overrun = false;
    if (status < 0) {
      // An overrun (ENOBUFS) shows as an error on the socket, which libuv reports by stopping the
      // poll: the error read (and so cleared), the poll goes on, and the lost messages count as a change.
      // Other errors the kernel leaves on the socket (EMSGSIZE when it could not build a
      // notification) lose a message too: the same.
      int soError = 0;
      socklen_t len = sizeof soError;
      if (getsockopt(self->fd_, SOL_SOCKET, SO_ERROR, &soError, &len) != 0 || soError == EBADF || soError == ENOTSOCK) {
        self->fail(std::string("poll: ") + uv_strerror(status) + (soError ? std::string(" (") + strerror(soError) + ")" : ""));
        return;
      }
      int started = uv_poll_start(h, UV_READABLE, OnReadable);
      if (started != 0) {
        self->fail(std::string("poll: ") + uv_strerror(started));
        return;
      }
      self->overruns_++;
      overrun = true;
    }
    self->drain(overrun);
  }

  // Whether an nftables message names one of the tables watched (nameIsFirstAttribute). A message
  // that cannot be read counts.
  bool namesWatchedTable(const nlmsghdr* m, size_t len) const {
    if ((m->nlmsg_type >> 8) != NFNL_SUBSYS_NFTABLES) return true;
    const uint8_t type = m->nlmsg_type & 0xff;
    if (type == NFT_MSG_NEWGEN) return false;
    if (!nameIsFirstAttribute(type)) return true;
    constexpr size_t NFGENMSG = 4;
    size_t off = NLMSG_HDRLEN + NFGENMSG;
    while (off + NLA_HDRLEN <= len) {
      nlattr a;
      memcpy(&a, reinterpret_cast<const uint8_t*>(m) + off, sizeof a);
      if (a.nla_len < NLA_HDRLEN || off + a.nla_len > len) return true;
      if ((a.nla_type & NLA_TYPE_MASK) == 1) {
        const char* v = reinterpret_cast<const char*>(m) + off + NLA_HDRLEN;
        std::string name(v, strnlen(v, a.nla_len - NLA_HDRLEN));
        return std::find(tables_.begin(), tables_.end(), name) != tables_.end();
      }
      off += NLA_ALIGN(a.nla_len);
    }
    return true;
  }

  void drain(bool overrun) {
    bool changed = overrun;
    // Messages are only looked into for a table's name: a longer one is cut short (and read whole).
    alignas(nlmsghdr) uint8_t buf[8192];
    for (int i = 0; i < 256 && fd_ >= 0; i++) {
      sockaddr_nl from{};
      socklen_t fromLen = sizeof from;
      // MSG_TRUNC: the datagram's whole length, even when the buffer took less.
      ssize_t n = recvfrom(fd_, buf, sizeof buf, MSG_DONTWAIT | MSG_TRUNC, reinterpret_cast<sockaddr*>(&from), &fromLen);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        if (errno == EBADF || errno == ENOTSOCK) {
          lastError_ = errnoText("netlink receive", errno);
          break;
        }
        // The kernel dropped messages for us (ENOBUFS, or another error it left on the socket):
        // whatever they said, something changed.
        overruns_++;
        overrun = changed = true;
        continue;
      }
      if (from.nl_pid != 0) {
        ignored_++;
        continue;
      }
      messages_++;
      if (changed || !filterTables_) {
        changed = true;
        continue;
      }
      // Each message in the datagram; one cut short by the buffer is looked into as far as it goes.
      size_t avail = std::min<size_t>(size_t(n), sizeof buf), off = 0;
      while (!changed && off + NLMSG_HDRLEN <= avail) {
        auto* m = reinterpret_cast<nlmsghdr*>(buf + off);
        if (m->nlmsg_len < NLMSG_HDRLEN) break;
        if (m->nlmsg_len > avail - off) {
          // The last one, cut short (or a length past the datagram): as far as it goes.
          changed = namesWatchedTable(m, avail - off);
          off = avail;
          break;
        }
        changed = namesWatchedTable(m, m->nlmsg_len);
        off += NLMSG_ALIGN(m->nlmsg_len);
      }
      // Nothing in it that reads as a message, or a datagram longer than the buffer that named none
      // of ours in what it took: counted.
      if (off == 0 || size_t(n) > sizeof buf) changed = true;
    }
    if (!changed || poll_ == nullptr) return;
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    onChange_.MakeCallback(Value(), {Napi::Boolean::New(env, overrun)});
    if (env.IsExceptionPending()) lastError_ = "callback threw: " + env.GetAndClearPendingException().Message();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (poll_) {
      // uv_close takes the descriptor out of the loop's epoll before it is closed.
      uv_poll_stop(poll_);
      uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
      poll_ = nullptr;
      ::close(fd_);
      fd_ = -1;
      onChange_.Reset();
      Unref();
    }
    return info.Env().Undefined();
  }

  // The watch does not keep the process alive by itself.
  Napi::Value UnrefHandle(const Napi::CallbackInfo& info) {
    if (poll_) uv_unref(reinterpret_cast<uv_handle_t*>(poll_));
    return info.Env().Undefined();
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    auto o = Napi::Object::New(info.Env());
    o.Set("messages", Napi::Number::New(info.Env(), double(messages_)));
    o.Set("overruns", Napi::Number::New(info.Env(), double(overruns_)));
    o.Set("ignored", Napi::Number::New(info.Env(), double(ignored_)));
    o.Set("failed", Napi::Boolean::New(info.Env(), failed_));
    o.Set("lastError", lastError_.empty() ? info.Env().Null() : Napi::String::New(info.Env(), lastError_));
    return o;
  }
};

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("UdpPort", UdpPort::Init(env));
  exports.Set("TapPort", TapPort::Init(env));
  exports.Set("FastPath", FastPath::Init(env));
  exports.Set("HopCipher", HopCipher::Init(env));
  exports.Set("addressHandle", Napi::Function::New(env, AddressHandle));
  exports.Set("releaseAddressHandle", Napi::Function::New(env, ReleaseAddressHandle));
  exports.Set("netlinkRequest", Napi::Function::New(env, NetlinkRequest));
  exports.Set("NetlinkWatch", NetlinkWatch::Init(env));
  // The sleeve's packet format as this code has it: JavaScript checks it against its own
  // (datapath/sleeve/packet.ts) before it uses the fast path, so the two cannot drift apart unseen.
  Napi::Object c = Napi::Object::New(env);
  c.Set("SLEEVE_VERSION", SLEEVE_VERSION);
  c.Set("KIND_FRAMES", KIND_FRAMES);
  c.Set("KIND_FRAGMENT", KIND_FRAGMENT);
  c.Set("MAX_HOPS", MAX_HOPS);
  c.Set("SLEEVE_HEADER", SLEEVE_HEADER);
  c.Set("FRAGMENT_HEADER", FRAGMENT_HEADER);
  c.Set("MESSAGE_HEADER", MESSAGE_HEADER);
  c.Set("VNET_HDR", VNET_HDR);
  c.Set("MAX_UDP_PAYLOAD", MAX_UDP_PAYLOAD);
  c.Set("SEALED", SEALED);
  c.Set("SEAL_OVERHEAD", SEAL_OVERHEAD);
  exports.Set("constants", c);
  return exports;
}

}  // namespace

NODE_API_MODULE(weft_native, Init)
