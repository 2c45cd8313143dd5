# The inventory's shape as data: every table and key, its type, bounds and whitelist, and a
# line of documentation. validate.nix checks an inventory against it before any rule between
# keys; nothing else in Homestack repeats these declarations.
#
# Patterns are POSIX extended regular expressions as `builtins.match` reads them. They never
# use `.` or a negated class: in Nix both also match a newline, and a newline in a value
# that reaches a rendered file or a command line is how injections start.
let
  label = "[a-z]([a-z0-9-]{0,61}[a-z0-9])?";
  octet = "(0|[1-9][0-9]?|1[0-9][0-9]|2[0-4][0-9]|25[0-5])";
  ipv4 = "${octet}\\.${octet}\\.${octet}\\.${octet}";
  hostLabel = "[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?";
  b64 = "[A-Za-z0-9+/]";
  # An OpenSSH public key comment: printable ASCII, spaces allowed, no line break.
  comment = "( [!-~][ -~]{0,199})?";

  patterns = rec {
    inherit label ipv4;
    domain = "${label}(\\.${label})*";
    cidr = "${ipv4}/(0|[1-9]|[12][0-9]|3[0-2])";
    # Linux interface names: at most 15 bytes, no '/', ':' or white space; "." and ".."
    # are refused by the kernel (dev_valid_name), so the first character is never a dot.
    ifname = "[A-Za-z0-9_-][A-Za-z0-9_.-]{0,14}";
    # ed25519 keys are 68 characters of base64 (the 19-byte type header and 32 key bytes).
    sshEd25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI${b64}{43}${comment}";
    sshAny = "(ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI${b64}{43}|(ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\\.com|sk-ecdsa-sha2-nistp256@openssh\\.com) ${b64}{40,2000}={0,2})${comment}";
    age = "age1[02-9ac-hj-np-z]{58}";
    wgKey = "${b64}{42}[AEIMQUYcgkosw048]=";
    mac = "[0-9a-f]{2}(:[0-9a-f]{2}){5}";
    hostId = "[0-9a-f]{8}";
    # ZFS pool names start with a letter (zpool(8)); the words zpool reserves are refused
    # by validate.nix.
    zfsPool = "[A-Za-z][A-Za-z0-9_.:-]{0,63}";
    # An SSH destination for deploy: [user@]host, never something ssh could read as an option.
    target = "([a-z_][a-z0-9_-]{0,31}@)?(${hostLabel}(\\.${hostLabel})*|${ipv4})";
    email = "[A-Za-z0-9._%+-]{1,64}@${hostLabel}(\\.${hostLabel})+";
    # A Caddy path matcher: a leading slash, then URL path characters and `*` wildcards.
    path = "/[A-Za-z0-9._~/*%-]{0,255}";
    pgIdent = "[a-z_][a-z0-9_]{0,62}";
  };

  str = what: pattern: {
    type = "string";
    inherit what pattern;
  };
  int = min: max: {
    type = "int";
    inherit min max;
  };
  bool = {
    type = "bool";
  };
  enum = values: {
    type = "enum";
    inherit values;
  };
  list = maxItems: item: {
    type = "list";
    inherit maxItems item;
  };
  table = keys: {
    type = "table";
    inherit keys;
  };
  # A table whose keys are names chosen by the user (users, hosts, guests).
  named = what: value: {
    type = "named";
    inherit what value;
    pattern = label;
  };
  key = doc: t: t // { inherit doc; required = false; };
  required = doc: t: t // { inherit doc; required = true; };

  port = int 1 65535;
  proto = enum [ "tcp" "udp" ];
  portEntry = table {
    port = required "Port number." port;
    proto = required "Protocol." proto;
  };
  name = str "a name (lowercase letters, digits and dashes, starting with a letter)" label;

  services = builtins.attrNames (import ./services.nix);

  user = table {
    admin = key "Admins log in everywhere as root and can decrypt every secret." bool;
    ssh_keys = key "SSH public keys, one line each." (list 32 (str "an SSH public key on one line" patterns.sshAny));
    age_key = key "The user's age recipient (age1…), for sops." (str "an age recipient (age1…)" patterns.age);
  };

  # Zero application services on bare metal: a host's only jobs are the plan's.
  host = table {
    role = required "hypervisor (runs the guests) or relay (the public anchor)." (enum [ "hypervisor" "relay" ]);
    system = required "The Nix system of the machine." (enum [ "x86_64-linux" "aarch64-linux" ]);
    target = required "How deploy reaches it over SSH: [user@]host." (str "an SSH destination like root@host (letters, digits, dots and dashes; never an option)" patterns.target);
    host_key = key "The machine's SSH ed25519 host key (its age identity comes from it)." (str "an ssh-ed25519 public key on one line" patterns.sshEd25519);
    age_key = key "The age recipient of the host key (tools secrets bootstrap writes it)." (str "an age recipient (age1…)" patterns.age);
    lan_interface = key "Hypervisors: the LAN interface the guest network is NATed out of." (str "an interface name of at most 15 characters (letters, digits, _ . -)" patterns.ifname);
    public_address = key "Relays: the public IPv4 address." (str "an IPv4 address" patterns.ipv4);
    engine = key "Hypervisors: what runs the guests, microvm (microvm.nix, the default) or incus (Incus system containers and VMs, declared with OpenTofu)." (enum [ "microvm" "incus" ]);
    zfs = key "Hypervisors: the ZFS pool that keeps each guest's state." (table {
      pool = required "Pool name." (str "a ZFS pool name (a letter, then letters, digits, _ . : -)" patterns.zfsPool);
      host_id = required "networking.hostId: 8 lowercase hex digits, unique per machine." (str "8 lowercase hex digits (head -c4 /dev/urandom | od -An -tx4)" patterns.hostId);
    });
    wireguard = key "The tunnel between the hypervisor and the relay." (table {
      relay = key "Hypervisors: the relay host this one dials." name;
      address = required "The machine's address in networks.tunnel." (str "an IPv4 address" patterns.ipv4);
      public_key = required "The WireGuard public key (44 characters of base64)." (str "a WireGuard public key (44 characters of base64)" patterns.wgKey);
      port = key "Relays: the UDP port WireGuard listens on." port;
    });
  } // {
    refuse.services = "hosts run no application service (zero services on bare metal); put it on a guest";
  };

  guest = table {
    host = required "The hypervisor that runs this guest." name;
    address = required "The guest's address in networks.guests." (str "an IPv4 address" patterns.ipv4);
    vcpu = required "Virtual CPUs." (int 1 64);
    memory = required "Memory in MiB." (int 128 1048576);
    services = required "What runs inside: each names a catalogue entry and its NixOS module." (list 16 (enum services));
    state_size = required "MiB of persistent state (a ZFS dataset on the hypervisor)." (int 16 16777216);
    host_key = key "The guest's SSH ed25519 host key." (str "an ssh-ed25519 public key on one line" patterns.sshEd25519);
    age_key = key "The age recipient of the guest's host key." (str "an age recipient (age1…)" patterns.age);
    routes = key "Names published through the proxy as https://<name>.<domain>." (list 256 (table {
      name = required "The route's DNS label." (str "a DNS label" label);
      port = required "The guest's port the proxy forwards to." port;
      path = key "A path prefix on that name (default /)." (str "a path: / then letters, digits and . _ ~ / * % -" patterns.path);
      h2c = key "Forward as HTTP/2 without TLS (gRPC)." bool;
    }));
    allow = key "Who may reach which of this guest's ports." (list 256 (table {
      from = required "Sources: guest names, host names, \"guests\" or \"lan\"." (list 256 (str "a source name" label));
      port = required "The port." port;
      proto = key "tcp (default) or udp." proto;
    }));
    databases = key "PostgreSQL databases this guest owns." (list 64 (table {
      name = required "Database and role name." (str "a PostgreSQL identifier (lowercase letters, digits, _; at most 63)" patterns.pgIdent);
      server = required "The guest running postgresql." name;
    }));
    public = key "Ports the relay forwards from the internet to this guest." (list 64 portEntry);
    egress = key "What this guest may reach outside the guest network, beyond what the plan implies." (list 64 (table {
      to = required "internet, or lan (the home network)." (enum [ "internet" "lan" ]);
      port = required "The destination port." port;
      proto = key "tcp (default) or udp." proto;
    }));
    ports = key "Ports of software the catalogue does not describe." (list 256 portEntry);
    mac = key "Override the derived MAC address." (str "a lowercase MAC address like 02:00:00:00:00:01" patterns.mac);
    tap = key "Override the tap interface name (default vm-<guest>)." (str "an interface name of at most 15 characters (letters, digits, _ . -)" patterns.ifname);
    hypervisor = key "The microvm.nix hypervisor (with virtiofs)." (enum [ "cloud-hypervisor" "qemu" "crosvm" ]);
    kind = key "On an incus host: container (an LXC system container, the default) or vm (a KVM virtual machine)." (enum [ "container" "vm" ]);
  };
in
{
  inherit patterns;

  inventory = table {
    domain = required "The internal DNS domain: routes are <name>.<domain>." (str "a lowercase DNS name" patterns.domain);
    certificates = key "How TLS certificates are obtained." (table {
      mode = key "private-ca (default) or acme-dns01." (enum [ "private-ca" "acme-dns01" ]);
      include_network = key "Also permit the guest network's addresses in the CA's name constraints." bool;
      acme_email = key "acme-dns01: the ACME account e-mail." (str "an e-mail address" patterns.email);
    });
    users = required "People; admins can log in everywhere and decrypt every secret." (named "user" user);
    networks = required "The guest network and the relay tunnel." (table {
      guests = required "The guest bridge network." (table {
        cidr = required "The guest network, e.g. 192.168.100.0/24." (str "an IPv4 CIDR like 192.168.100.0/24" patterns.cidr);
        gateway = required "The hypervisor's address on it." (str "an IPv4 address" patterns.ipv4);
        bridge = key "The bridge's name (default br-guests)." (str "an interface name of at most 15 characters (letters, digits, _ . -)" patterns.ifname);
      });
      tunnel = key "The WireGuard tunnel network between the hypervisor and the relay." (table {
        cidr = required "The tunnel network, e.g. 10.99.0.0/24." (str "an IPv4 CIDR like 10.99.0.0/24" patterns.cidr);
      });
    });
    hosts = required "Physical or cloud machines." (named "host" host);
    guests = required "MicroVM guests, one job each." (named "guest" guest);
  };
}
