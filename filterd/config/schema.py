"""The typed, frozen configuration: one dataclass per YAML section.

Every field here is a YAML key of the same name; `docs/config.md` documents each one. The loader
(`filterd.config.load`) is the only place that builds these objects, so a `Config` is always valid.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An IP address and port a listener binds or an upstream is reached at."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_wildcard(self) -> bool:
        return ipaddress.ip_address(self.host).is_unspecified


@dataclass(frozen=True, slots=True)
class EncryptedUpstream(Endpoint):
    """An upstream reached over TLS: DoT (`tls://NAME[:PORT][@ADDRESS]`, RFC 7858) or DoH
    (`https://NAME[:PORT]/PATH[@ADDRESS]`, RFC 8484). `host` is the pinned address, or "" when NAME is resolved
    through `dns.bootstrap`; the certificate is always verified for `server_name`."""

    scheme: str = "tls"  # "tls" | "https"
    server_name: str = ""
    path: str = ""  # DoH only, e.g. /dns-query

    def __str__(self) -> str:
        port = "" if self.port == (853 if self.scheme == "tls" else 443) else f":{self.port}"
        pin = "" if self.host in ("", self.server_name) else f"@{self.host}"
        return f"{self.scheme}://{self.server_name}{port}{self.path}{pin}"


#: Who may query by default: loopback, RFC 1918, RFC 6598 (CGNAT), ULA and link-local. Never the world.
DEFAULT_ALLOW_CLIENTS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    )
)


@dataclass(frozen=True, slots=True)
class DnsConfig:
    listen: tuple[Endpoint, ...]
    #: Empty means "the nameservers of /etc/resolv.conf", resolved when the server starts.
    upstreams: tuple[Endpoint, ...] = ()
    timeout: float = 2.0
    allow_clients: tuple[IPNetwork, ...] = DEFAULT_ALLOW_CLIENTS
    #: zone -> its own upstreams (conditional forwarding: the LAN, Active Directory, reverse zones).
    forward_zones: tuple[tuple[str, tuple[Endpoint, ...]], ...] = ()
    #: local name -> its addresses, answered by filterd itself.
    records: tuple[tuple[str, tuple[IPAddress, ...]], ...] = ()
    #: Drop upstream answers that put a public name on a private, loopback or link-local address (DNS rebinding).
    rebind_protection: bool = True
    #: Names (with everything under them) that may answer private addresses anyway, e.g. plex.direct.
    rebind_allow: tuple[str, ...] = ()
    #: Load balancers (dnsdist) whose packets carry the PROXY protocol v2 header naming the real client; only
    #: these may, and each of their packets must. Empty: off.
    proxy_protocol: tuple[IPNetwork, ...] = ()
    #: Plain resolvers that look up the NAME of a `tls://` or `https://` upstream with no pinned address; empty:
    #: the plain `upstreams`, else /etc/resolv.conf's nameservers (never filterd itself).
    bootstrap: tuple[Endpoint, ...] = ()
    #: CA certificates (PEM) that encrypted upstreams are verified against instead of the system store.
    upstream_ca_file: Path | None = None
    #: DNS over TLS served to clients (RFC 7858; port 853 by default), with the top-level `tls` certificate.
    tls_listen: tuple[Endpoint, ...] = ()
    #: DNS over HTTPS served to clients at /dns-query (RFC 8484; port 443 by default; HTTP/2 and HTTP/1.1).
    https_listen: tuple[Endpoint, ...] = ()
    #: Processes answering DNS on `listen` (SO_REUSEPORT): the main one and `workers - 1` more (filterd/workers/);
    #: `auto` in the file is this machine's CPU count.
    workers: int = 1


class BlockingMode(enum.StrEnum):
    SINKHOLE = "sinkhole"
    NULL = "null"
    NXDOMAIN = "nxdomain"
    REFUSED = "refused"


_LOOPBACK_V4 = ipaddress.IPv4Address("127.0.0.1")
_LOOPBACK_V6 = ipaddress.IPv6Address("::1")


@dataclass(frozen=True, slots=True)
class SinkholeConfig:
    ipv4: ipaddress.IPv4Address = _LOOPBACK_V4
    ipv6: ipaddress.IPv6Address = _LOOPBACK_V6


@dataclass(frozen=True, slots=True)
class BlockingConfig:
    mode: BlockingMode = BlockingMode.SINKHOLE
    sinkhole: SinkholeConfig = field(default_factory=SinkholeConfig)
    ttl: int = 10


class ListFormat(enum.StrEnum):
    AUTO = "auto"
    HOSTS = "hosts"
    DOMAINS = "domains"
    ADBLOCK = "adblock"


DEFAULT_REFRESH = 86400.0
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_LIST_TIMEOUT = 300.0
#: Where downloaded lists are kept (`state_dir`), unless the config says otherwise.
DEFAULT_STATE_DIR = Path("/var/lib/filterd")


@dataclass(frozen=True, slots=True)
class ListConfig:
    """One blocklist: exactly one of `path`, `builtin` or `url` is set."""

    name: str
    path: Path | None = None
    builtin: str | None = None
    #: A subscription: downloaded (http or https) into `state_dir` and refreshed in the background.
    url: str | None = None
    format: ListFormat = ListFormat.AUTO
    #: None: the format's own default (hosts: exact names; domains, adblock and builtin lists: subtrees).
    subdomains: bool | None = None
    category: str = "blocked"
    enabled: bool = True
    #: url lists only: seconds between refreshes (each one jittered by up to 10%).
    refresh: float = DEFAULT_REFRESH
    #: url and path lists: a larger download or file is not used (the last good version stays in use).
    max_bytes: int = DEFAULT_MAX_BYTES
    #: url and path lists: a version with fewer than this share of the last good one's entries is held back.
    shrink_guard: float = 0.5
    #: url lists only: seconds one download attempt may take.
    timeout: float = DEFAULT_LIST_TIMEOUT
    #: url lists only: the built-in list served until the first download succeeds (never an empty list).
    fallback: str | None = None
    #: Take entries that are public suffixes (`com`, `co.uk`, `github.io`); refused as invalid lines otherwise.
    allow_suffixes: bool = False

    @property
    def source(self) -> str:
        if self.url:
            return self.url
        return f"builtin:{self.builtin}" if self.builtin else str(self.path)


DEFAULT_LISTS: tuple[ListConfig, ...] = (
    ListConfig(name="chat-roulette", builtin="chat-roulette", category="chat-roulette"),
)


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """The answer cache; `size: 0` turns it off."""

    size: int = 10000
    min_ttl: int = 0
    max_ttl: int = 86400
    #: How long past expiry an entry may still be served when every upstream fails (RFC 8767).
    stale_max: int = 86400


class YoutubeRestriction(enum.StrEnum):
    """YouTube's Restricted Mode by DNS (Google Workspace help 6214622): strict hides more than moderate."""

    STRICT = "strict"
    MODERATE = "moderate"
    OFF = "off"


@dataclass(frozen=True, slots=True)
class SafeSearchConfig:
    """`safe_search`: the search and video hosts answered with the providers' safe endpoints
    (`filterd/data/safesearch.tsv`). `true` is `{enabled: true}`; each provider can be switched off."""

    enabled: bool = False
    google: bool = True
    youtube: YoutubeRestriction = YoutubeRestriction.STRICT
    bing: bool = True
    duckduckgo: bool = True
    ecosia: bool = True
    pixabay: bool = True
    yandex: bool = True


#: Never rate limited unless `ratelimit.exempt` says otherwise: this machine itself.
DEFAULT_RATELIMIT_EXEMPT: tuple[IPNetwork, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """`ratelimit`: a token bucket per client /24 (IPv4) or /56 (IPv6) for UDP queries (`pipeline/ratelimit.py`);
    `false` turns it off. The defaults are far above a busy household or classroom (docs/pipeline.md)."""

    enabled: bool = True
    #: Queries per second one network may send, sustained: 30 devices each loading a cold 100-host page every 7 s.
    qps: float = 2000.0
    #: Queries one network may send at once (the bucket's size): 30 devices loading such a page in the same second,
    #: and half again (bench/browser_burst.py measured about 350 queries for one, IPv4 only).
    burst: int = 20000
    #: Every slip-th query over the rate gets an empty TC=1 reply (the client retries over TCP); the rest are
    #: dropped. 0: drop them all; 1: slip them all.
    slip: int = 2
    #: Client networks never limited; replaces the default (loopback).
    exempt: tuple[IPNetwork, ...] = DEFAULT_RATELIMIT_EXEMPT


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """The certificate filterd serves DoT and DoH with: PEM files (re-read on SIGHUP), or one the local CA makes."""

    #: The certificate chain and its key (PEM files): mode `files` only.
    cert: Path | None = None
    key: Path | None = None
    #: `files` (`cert` and `key`) or `local-ca`: a certificate for `names` and `addresses`, signed by the CA in
    #: `<state_dir>/ca/` (`filterd ca init`), made at start and again before it ends.
    mode: str = "files"
    #: With `local-ca`: the DNS names and IP addresses clients reach filterd by (the certificate's subjectAltName).
    names: tuple[str, ...] = ()
    addresses: tuple[IPAddress, ...] = ()

    @property
    def local_ca(self) -> bool:
        return self.mode == "local-ca"


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: Endpoint


@dataclass(frozen=True, slots=True)
class HelpItem:
    """One line of the block page's "if something worried you" list; `url` (and its text `link`) optional."""

    text: str
    url: str | None = None
    #: The link's visible text; None: the URL without its scheme.
    link: str | None = None


#: The block page's help list: UK services by default (a school elsewhere lists its own).
DEFAULT_HELP: tuple[HelpItem, ...] = (
    HelpItem("Talk to a parent, carer or teacher you trust. It is never too late to tell someone."),
    HelpItem(
        "Want to talk to someone else? Childline is free and private: call 0800 1111, any time, or chat online at",
        "https://www.childline.org.uk/",
        "childline.org.uk",
    ),
    HelpItem(
        "Someone online made you feel unsafe, scared or worried? Report it to CEOP, the police team that keeps "
        "children safe online:",
        "https://www.ceop.police.uk/Safety-Centre/",
        "ceop.police.uk/safety-centre",
    ),
    HelpItem(
        "A nude photo or video of you is online? Report Remove, from Childline and the IWF, can help get it "
        "taken down:",
        "https://www.childline.org.uk/remove",
        "childline.org.uk/remove",
    ),
    HelpItem("In danger right now? Call", "tel:999", "999"),
)

#: Category ids of the shipped list -> what kind of site it is, in words a child understands.
DEFAULT_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("chat-roulette-video", "random video chat with strangers"),
    ("adult-cam-roulette", "adult video chat with strangers"),
    ("anonymous-text-chat", "anonymous chat with strangers"),
    ("video-chat-rooms", "video chat rooms open to strangers"),
)


@dataclass(frozen=True, slots=True)
class BlockpageTexts:
    """Every word on the block page; `$site`, `$category`, `$category_id`, `$list`, `$entry` and `$contact`
    are filled in (escaped). docs/config.md says where each one appears."""

    lang: str = "en"
    title: str = "Blocked: $site"
    this_site: str = "this site"
    heading: str = "This site is blocked"
    what: str = "It is a site for $category, and it is blocked on this network."
    what_other: str = "It is on this network's list of blocked sites."
    what_none: str = "This network blocks some websites, and the one you tried to open is one of them."
    reassure: str = "This page is here to help keep you safe. Seeing it does not mean you are in trouble."
    why_heading: str = "Why is it blocked?"
    why: str = (
        "Sites that pair you with strangers on camera or in chat are places where people get pressured, tricked, "
        "or shown things they did not want to see. You can never be sure who is really on the other side."
    )
    why_other: str = "The people who look after this network decided that this site should not be used here."
    help_heading: str = "If something online has worried you"
    help_intro: str = "You are not on your own. Any of these can help:"
    help: tuple[HelpItem, ...] = DEFAULT_HELP
    parents_heading: str = "For parents, carers and teachers"
    parents_contact: str = "This filter is run by $contact."
    parents_no_contact: str = (
        "This filter is run by whoever looks after this network: at home, the person who set up the internet; "
        "at school, the IT or safeguarding team."
    )
    unblock: str = "If a site was blocked by mistake, ask them to unblock it, and tell them its name."
    unblock_link: str = "Ask for this site to be unblocked"
    details: str = "Details: $entry is on the list $list (category $category_id)."
    #: Category id -> description; the shipped ones plus any configured (which win).
    categories: tuple[tuple[str, str], ...] = DEFAULT_CATEGORIES


@dataclass(frozen=True, slots=True)
class BlockpageHttpsConfig:
    """`blockpage.https`: the page over HTTPS too, for managed devices that trust filterd's local CA."""

    #: Where the HTTPS page listens (port default 443): in production, the sinkhole address on port 443.
    listen: tuple[Endpoint, ...]
    #: Only `local-ca`: each blocked name gets a short-lived certificate signed by the CA in `<state_dir>/ca/`.
    mode: str = "local-ca"


@dataclass(frozen=True, slots=True)
class BlockpageConfig:
    """The sinkhole's web server: explains a block to whoever's browser was sent there."""

    #: In production: the sinkhole address on port 80.
    listen: tuple[Endpoint, ...]
    #: Who runs this filter, shown to parents and teachers; None: `texts.parents_no_contact`.
    contact: str | None = None
    #: Where to ask for an unblock (http(s), mailto: or tel:); None: no link.
    unblock_url: str | None = None
    texts: BlockpageTexts = field(default_factory=BlockpageTexts)
    #: The page over HTTPS with a local CA; None (the default): nothing listens on 443.
    https: BlockpageHttpsConfig | None = None


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The admin API that the CLI talks to; every request needs the token in `token_file`."""

    listen: Endpoint
    #: Created at the first start (mode 0600) when missing. None: `<state_dir>/admin.token`.
    token_file: Path
    #: A non-loopback `listen` must be asked for explicitly.
    allow_remote: bool = False
    #: How long an admin page login lasts (seconds); then the page asks for the token again.
    session_ttl: int = 12 * 3600


@dataclass(frozen=True, slots=True)
class QueryLogConfig:
    """`querylog`: who asked what and what filterd did, in SQLite in `state_dir`, for `retention` seconds."""

    retention: int = 14 * 86400
    #: full | hash-clients | blocked-only | off (filterd/querylog/record.py says what each keeps)
    privacy: str = "full"
    #: A second sink: one JSON object a line, appended (for Loki or Elasticsearch when several instances run).
    jsonl: Path | None = None
    #: Whether the config has a `querylog` section (then state_dir is used even without the admin API).
    configured: bool = False


@dataclass(frozen=True, slots=True)
class AlertRule:
    """One safeguarding alert: `attempts` blocked attempts by one device within `within` seconds, for names in
    `categories` (a category or a list name), optionally only in the `when` windows."""

    name: str
    categories: tuple[str, ...]
    attempts: int = 1
    within: int = 600
    when: tuple[Window, ...] = ()
    timezone: str | None = None


@dataclass(frozen=True, slots=True)
class EmailConfig:
    smtp: str  # host:port
    sender: str
    to: tuple[str, ...]
    starttls: bool = True
    username: str | None = None
    password_file: Path | None = None


@dataclass(frozen=True, slots=True)
class NotifyConfig:
    webhook: str | None = None
    email: EmailConfig | None = None


@dataclass(frozen=True, slots=True)
class SafeguardingConfig:
    alerts: tuple[AlertRule, ...] = ()
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    #: At most one alert per device and rule in this many seconds.
    quiet: int = 3600


@dataclass(frozen=True, slots=True)
class Config:
    dns: DnsConfig
    blocking: BlockingConfig = field(default_factory=BlockingConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    lists: tuple[ListConfig, ...] = DEFAULT_LISTS
    #: Names never blocked, with everything under them (the only exception across lists).
    allow: tuple[str, ...] = ()
    #: Firefox's DoH canary and iCloud Private Relay get NXDOMAIN, DDR (`_dns.resolver.arpa`) NODATA, so
    #: devices keep using filterd (`pipeline/bypass.py`); false forwards those names as any other.
    bypass_protection: bool = True
    #: Off by default; per provider (`pipeline/safesearch.py`).
    safe_search: SafeSearchConfig = field(default_factory=SafeSearchConfig)
    #: On by default; `ratelimit: false` turns it off (`enabled=False`).
    ratelimit: RateLimitConfig = field(default_factory=RateLimitConfig)
    #: None: the listener is off.
    metrics: MetricsConfig | None = None
    #: None: the block page is off.
    blockpage: BlockpageConfig | None = None
    #: None: the admin API is off (and so are the CLI commands that need the running server).
    admin: AdminConfig | None = None
    #: Downloaded copies of `url` lists, local block/allow entries, the admin token, the compiled lists;
    #: used (and locked) when a url list is enabled or the admin API is on.
    state_dir: Path = DEFAULT_STATE_DIR
    #: Client groups, tried in order: the first whose `clients` match a query's client sets its rules; a client
    #: in no group gets the top-level rules.
    groups: tuple[GroupConfig, ...] = ()
    #: Named time windows that groups switch on (`groups[].schedules`).
    schedules: tuple[ScheduleConfig, ...] = ()
    #: DHCP lease files (dnsmasq or Kea CSV) that name clients for `groups[].clients` names and MACs.
    dhcp_leases: tuple[Path, ...] = ()
    #: The private query log.
    querylog: QueryLogConfig = field(default_factory=QueryLogConfig)
    #: Alerts to a safeguarding lead after repeated attempts.
    safeguarding: SafeguardingConfig = field(default_factory=SafeguardingConfig)
    #: The certificate for `dns.tls_listen` and `dns.https_listen`; None: neither can be on.
    tls: TlsConfig | None = None
    #: Where the config came from ("<embedded default>" or a path), for messages.
    source: str = "<embedded default>"


@dataclass(frozen=True, slots=True)
class Window:
    """One weekly time window: it starts on each of `days` (0 = Monday) at `start` and lasts until `end`
    (minutes after midnight, local time); an `end` at or before `start` ends the next day."""

    days: frozenset[int]
    start: int
    end: int
    #: As written, for messages and `filterd check`: "mon-thu,sun 21:00-07:00"
    text: str = ""


@dataclass(frozen=True, slots=True)
class ScheduleConfig:
    """A named set of weekly windows; while one is open, the groups that use it block `lists` (list names) or,
    with `block_all`, everything but their allow entries and the names a device needs to stay healthy."""

    name: str
    when: tuple[Window, ...]
    block_all: bool = False
    lists: tuple[str, ...] = ()
    #: An IANA zone name; None: the system's zone.
    timezone: str | None = None


@dataclass(frozen=True, slots=True)
class GroupConfig:
    """Clients with their own rules: `lists` (names of configured lists; None: every list), their own
    `block` and `allow` entries, schedules, and the bypass protection and safe search settings."""

    name: str
    #: IP addresses, CIDR networks (IPv4, IPv6), MAC addresses (aa:bb:cc:dd:ee:ff) and names, as written.
    clients: tuple[str, ...]
    lists: tuple[str, ...] | None = None
    block: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()
    schedules: tuple[str, ...] = ()
    #: None: the top-level setting.
    bypass_protection: bool | None = None
    #: None: the top-level setting.
    safe_search: SafeSearchConfig | None = None
