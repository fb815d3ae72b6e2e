//! Authorization: the ACL model and the one decision every client request goes through.
//!
//! Pure: no I/O here. A [`Rule`] says that a principal (or `*`) is allowed or denied an
//! [`Operation`] on a [`Resource`] (a topic or a group, named literally or by prefix, or the
//! cluster). [`needs`] maps every opcode of `protocol::requests::for_each_request!` to what a
//! request of it needs, decoding only the names it must (its match lists every opcode, so an
//! opcode added without a mapping does not compile). [`AclTable::decide`] answers: deny by
//! default, a matching deny wins over any allow, superusers are allowed everything.
//!
//! Where data enters and leaves: rules arrive by `AclAdd`/`AclRemove` (shard 0 writes
//! `<store>/acls.json` and hands the new table to every shard, `shard/handlers/acl.rs`), from
//! the master's metadata frames on a slave, or from `ringmq acl add --store` offline; the
//! decision runs in `shard::handlers::handle_client` before anything else.

use crate::config::Authorization;
use crate::constants::{MAX_NAME_BYTES, MAX_TOPICS_PER_GROUP};
use crate::protocol::codec::DecodeError;
use crate::protocol::message::*;
use crate::protocol::Opcode;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The principal of a connection that authenticated neither by mTLS nor by SCRAM.
pub const ANONYMOUS: &str = "ANONYMOUS";
/// A rule's principal that matches every principal, `ANONYMOUS` included.
pub const ANY_PRINCIPAL: &str = "*";
/// Rules a broker holds at most. Every authorized request scans the rules (linear, no index:
/// at this bound a scan is a few microseconds), and the whole table travels in each metadata
/// frame to the slaves, so it stays small: 4096 rules of ~100 bytes is ~400 KiB of JSON.
pub const MAX_ACL_RULES: usize = 4096;
/// Longest principal in a rule: a SPIFFE URI or an e-mail SAN fits.
pub const MAX_PRINCIPAL_BYTES: usize = 256;

/// Whether `name` is one of the principal names the ACLs give a meaning of their own
/// ([`ANONYMOUS`], [`ANY_PRINCIPAL`]): never a superuser, and a connection whose certificate
/// or user name is literally one of them is decided as a connection with no principal.
pub fn is_reserved_principal(name: &str) -> bool {
    name == ANONYMOUS || name == ANY_PRINCIPAL
}

/// Checks a list of superusers (the `superusers` key, or a master's as replicated): each is
/// 1 to [`MAX_PRINCIPAL_BYTES`] bytes without control characters, and none is reserved.
pub fn check_superusers(superusers: &[String]) -> Result<(), String> {
    for name in superusers {
        if name.is_empty() || name.len() > MAX_PRINCIPAL_BYTES || name.chars().any(char::is_control)
        {
            return Err(format!(
                "each principal is 1 to {MAX_PRINCIPAL_BYTES} bytes without control characters"
            ));
        }
        if name == ANY_PRINCIPAL {
            return Err(
                "`*` would make everyone a superuser: name the principals, or set authorization = \"off\""
                    .to_string(),
            );
        }
        if name == ANONYMOUS {
            return Err(format!(
                "`{ANONYMOUS}` would make every unauthenticated connection a superuser: name the principals, or set authorization = \"off\""
            ));
        }
    }
    Ok(())
}

/// What a request does, in the words of `ringmq acl --operation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// Topics: write messages.
    Produce,
    /// Topics: read messages (pull, group pull, commit a read, reject one).
    Consume,
    /// Topics: queue stats and description. Cluster: cluster status and the ACL list.
    Describe,
    /// Topics: create.
    Create,
    /// Topics: delete.
    Delete,
    /// Groups: commit offsets, reject a message (which moves the group on).
    Commit,
    /// Groups: read offsets, join, heartbeat, leave, list members, pull as a member.
    Fetch,
    /// Cluster: promote this broker to master.
    Promote,
    /// Cluster: demote it to a slave, or re-point a slave.
    Demote,
    /// Cluster: the merged counters, the retention status.
    Stats,
    /// Cluster: the topic table and every group's offsets.
    MetadataSnapshot,
    /// Cluster: run the retention pass now (`admin delete-expired`).
    Retention,
    /// Cluster: create, delete and list users (SCRAM).
    AlterUsers,
    /// Cluster: add and remove ACL rules.
    AlterAcls,
}

impl Operation {
    pub const ALL: &'static [Operation] = &[
        Operation::Produce,
        Operation::Consume,
        Operation::Describe,
        Operation::Create,
        Operation::Delete,
        Operation::Commit,
        Operation::Fetch,
        Operation::Promote,
        Operation::Demote,
        Operation::Stats,
        Operation::MetadataSnapshot,
        Operation::Retention,
        Operation::AlterUsers,
        Operation::AlterAcls,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Operation::Produce => "produce",
            Operation::Consume => "consume",
            Operation::Describe => "describe",
            Operation::Create => "create",
            Operation::Delete => "delete",
            Operation::Commit => "commit",
            Operation::Fetch => "fetch",
            Operation::Promote => "promote",
            Operation::Demote => "demote",
            Operation::Stats => "stats",
            Operation::MetadataSnapshot => "metadata_snapshot",
            Operation::Retention => "retention",
            Operation::AlterUsers => "alter_users",
            Operation::AlterAcls => "alter_acls",
        }
    }

    /// Whether the operation applies to resources of `kind`.
    pub fn applies_to(self, kind: Kind) -> bool {
        use Operation::*;
        match kind {
            Kind::Topic => matches!(self, Produce | Consume | Describe | Create | Delete),
            Kind::Group => matches!(self, Commit | Fetch),
            Kind::Cluster => matches!(
                self,
                Describe
                    | Promote
                    | Demote
                    | Stats
                    | MetadataSnapshot
                    | Retention
                    | AlterUsers
                    | AlterAcls
            ),
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Operation {
    type Err = String;
    fn from_str(s: &str) -> Result<Operation, String> {
        let wanted = s.replace('-', "_");
        Operation::ALL
            .iter()
            .copied()
            .find(|op| op.name() == wanted)
            .ok_or_else(|| {
                format!(
                    "unknown operation `{s}`: one of {}",
                    Operation::ALL
                        .iter()
                        .map(|o| o.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }
}

/// The kind of a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Topic,
    Group,
    Cluster,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Topic => "topic",
            Kind::Group => "group",
            Kind::Cluster => "cluster",
        }
    }
}

/// How a rule names topics or groups.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pattern {
    /// Exactly this name.
    Literal(String),
    /// Every name that starts with this (the empty prefix: every name).
    Prefix(String),
}

impl Pattern {
    fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::Literal(literal) => literal == name,
            Pattern::Prefix(prefix) => name.starts_with(prefix.as_str()),
        }
    }
}

/// What a rule is about. Written as `topic:NAME`, `topic-prefix:P`, `group:G`,
/// `group-prefix:P` or `cluster`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Resource {
    Topic(Pattern),
    Group(Pattern),
    Cluster,
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Topic(_) => Kind::Topic,
            Resource::Group(_) => Kind::Group,
            Resource::Cluster => Kind::Cluster,
        }
    }

    fn matches(&self, target: &Target) -> bool {
        match (self, target) {
            (Resource::Topic(pattern), Target::Topic(name))
            | (Resource::Group(pattern), Target::Group(name)) => pattern.matches(name),
            (Resource::Cluster, Target::Cluster) => true,
            _ => false,
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Topic(Pattern::Literal(n)) => write!(f, "topic:{n}"),
            Resource::Topic(Pattern::Prefix(p)) => write!(f, "topic-prefix:{p}"),
            Resource::Group(Pattern::Literal(n)) => write!(f, "group:{n}"),
            Resource::Group(Pattern::Prefix(p)) => write!(f, "group-prefix:{p}"),
            Resource::Cluster => f.write_str("cluster"),
        }
    }
}

/// A literal may name the broker's own topics (`%RETRY%g`, read by consumers); a prefix may
/// be any start of such a name, the empty one included.
fn check_pattern_name(kind: &str, name: &str, literal: bool) -> Result<(), String> {
    if name.len() > MAX_NAME_BYTES {
        return Err(format!("a {kind} name is at most {MAX_NAME_BYTES} bytes"));
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'%');
    if !name.bytes().all(allowed) {
        return Err(format!(
            "{kind} `{name}`: names have only letters, digits, '-', '_', '.' (and '%' in the broker's own)"
        ));
    }
    if literal && name.is_empty() {
        return Err(format!(
            "an empty {kind} name: give one, or `{kind}-prefix:` for every {kind}"
        ));
    }
    Ok(())
}

impl FromStr for Resource {
    type Err = String;
    fn from_str(s: &str) -> Result<Resource, String> {
        if s == "cluster" {
            return Ok(Resource::Cluster);
        }
        let (kind, name) = s.split_once(':').ok_or_else(|| {
            format!("resource `{s}`: one of topic:NAME, topic-prefix:P, group:G, group-prefix:P, cluster")
        })?;
        let name = name.to_string();
        let resource = match kind {
            "topic" => Resource::Topic(Pattern::Literal(name)),
            "topic-prefix" => Resource::Topic(Pattern::Prefix(name)),
            "group" => Resource::Group(Pattern::Literal(name)),
            "group-prefix" => Resource::Group(Pattern::Prefix(name)),
            other => {
                return Err(format!(
                "resource kind `{other}`: one of topic, topic-prefix, group, group-prefix, cluster"
            ))
            }
        };
        match &resource {
            Resource::Topic(Pattern::Literal(n)) => check_pattern_name("topic", n, true)?,
            Resource::Topic(Pattern::Prefix(n)) => check_pattern_name("topic", n, false)?,
            Resource::Group(Pattern::Literal(n)) => check_pattern_name("group", n, true)?,
            Resource::Group(Pattern::Prefix(n)) => check_pattern_name("group", n, false)?,
            Resource::Cluster => {}
        }
        Ok(resource)
    }
}

impl TryFrom<String> for Resource {
    type Error = String;
    fn try_from(s: String) -> Result<Resource, String> {
        s.parse()
    }
}

impl From<Resource> for String {
    fn from(r: Resource) -> String {
        r.to_string()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    Allow,
    Deny,
}

impl Effect {
    pub fn name(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        }
    }
}

impl FromStr for Effect {
    type Err = String;
    fn from_str(s: &str) -> Result<Effect, String> {
        match s {
            "allow" => Ok(Effect::Allow),
            "deny" => Ok(Effect::Deny),
            other => Err(format!("effect `{other}`: allow or deny")),
        }
    }
}

/// One rule. Checked when made ([`Rule::new`]) and when a table is read back.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Rule {
    /// A principal's name exactly, `ANONYMOUS`, or `*` for everyone.
    pub principal: String,
    pub operation: Operation,
    pub resource: Resource,
    pub effect: Effect,
}

impl Rule {
    pub fn new(
        principal: &str,
        operation: Operation,
        resource: Resource,
        effect: Effect,
    ) -> Result<Rule, String> {
        let rule = Rule {
            principal: principal.to_string(),
            operation,
            resource,
            effect,
        };
        rule.check()?;
        Ok(rule)
    }

    /// A rule from the four texts of `AclAdd`/`AclRemove`.
    pub fn parse(
        principal: &str,
        operation: &str,
        resource: &str,
        effect: &str,
    ) -> Result<Rule, String> {
        Rule::new(
            principal,
            operation.parse()?,
            resource.parse()?,
            effect.parse()?,
        )
    }

    fn check(&self) -> Result<(), String> {
        if self.principal.is_empty() || self.principal.len() > MAX_PRINCIPAL_BYTES {
            return Err(format!(
                "a principal is 1 to {MAX_PRINCIPAL_BYTES} bytes (`*` for everyone, `{ANONYMOUS}` for unauthenticated connections)"
            ));
        }
        if self.principal.chars().any(char::is_control) {
            return Err("a principal has no control characters".to_string());
        }
        let kind = self.resource.kind();
        if !self.operation.applies_to(kind) {
            let valid: Vec<&str> = Operation::ALL
                .iter()
                .filter(|o| o.applies_to(kind))
                .map(|o| o.name())
                .collect();
            return Err(format!(
                "`{}` is not an operation on a {}: one of {}",
                self.operation,
                kind.name(),
                valid.join(", ")
            ));
        }
        Ok(())
    }

    /// Whether this rule speaks of `need` for `principal`. An allow rule for produce or
    /// consume on a topic also allows describing it (Kafka's rule: READ and WRITE imply
    /// DESCRIBE), so a client allowed to write or read a topic can see its offsets, as every
    /// Kafka producer's retry and consumer's position needs; a deny rule denies only its own
    /// operation.
    fn matches(&self, principal: &str, need: &Need) -> bool {
        let operation = self.operation == need.operation
            || (self.effect == Effect::Allow
                && need.operation == Operation::Describe
                && matches!(self.operation, Operation::Produce | Operation::Consume));
        operation
            && (self.principal == ANY_PRINCIPAL || self.principal == principal)
            && self.resource.matches(&need.target)
    }

    pub fn entry(&self) -> crate::protocol::admin::AclEntry {
        crate::protocol::admin::AclEntry {
            principal: self.principal.clone(),
            operation: self.operation.name().to_string(),
            resource: self.resource.to_string(),
            effect: self.effect.name().to_string(),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} on {}",
            self.effect.name(),
            self.principal,
            self.operation,
            self.resource
        )
    }
}

/// One concrete thing a request acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Topic(String),
    Group(String),
    Cluster,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Topic(name) => write!(f, "topic `{name}`"),
            Target::Group(name) => write!(f, "group `{name}`"),
            Target::Cluster => f.write_str("the cluster"),
        }
    }
}

/// One permission a request needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Need {
    pub operation: Operation,
    pub target: Target,
}

impl Need {
    pub fn topic(operation: Operation, name: impl Into<String>) -> Need {
        Need {
            operation,
            target: Target::Topic(name.into()),
        }
    }
    pub fn group(operation: Operation, name: impl Into<String>) -> Need {
        Need {
            operation,
            target: Target::Group(name.into()),
        }
    }
    pub fn cluster(operation: Operation) -> Need {
        Need {
            operation,
            target: Target::Cluster,
        }
    }

    /// Whether a call needing this is an admin call (written to the audit log).
    pub fn is_admin(&self) -> bool {
        matches!(self.target, Target::Cluster)
            || matches!(self.operation, Operation::Create | Operation::Delete)
    }
}

/// A refusal: the first need no rule allowed (or a rule denied).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied {
    pub principal: String,
    pub need: Need,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "principal `{}` is not authorized to {} {}",
            self.principal, self.need.operation, self.need.target
        )
    }
}

/// What a request of `opcode` with `body` needs, every permission of it; empty: open to every
/// connection (ping, metadata and the topic list, which every client needs to route, and the
/// name-server opcodes a broker refuses anyway). A body that does not decode is the caller's
/// `BAD_REQUEST`, as the handler would answer it.
///
/// No `_` arm: an opcode added to `for_each_request!` without a row here does not compile.
pub fn needs(opcode: Opcode, body: &[u8]) -> Result<Vec<Need>, DecodeError> {
    use Operation as O;
    Ok(match opcode {
        Opcode::Ping
        | Opcode::Metadata
        | Opcode::TopicList
        | Opcode::BrokerRegister
        | Opcode::BrokerUnregister
        | Opcode::RouteQuery
        // The SCRAM steps run on the connection before any request is decided.
        | Opcode::AuthStart
        | Opcode::AuthFinish => Vec::new(),
        Opcode::Produce => vec![Need::topic(O::Produce, leading_name(body)?)],
        Opcode::Pull => vec![Need::topic(O::Consume, PullRequest::decode(body)?.topic)],
        Opcode::QueueStats => vec![Need::topic(O::Describe, QueueRef::decode(body)?.topic)],
        Opcode::TopicCreate => vec![Need::topic(O::Create, TopicCreate::decode(body)?.name)],
        Opcode::TopicDelete => vec![Need::topic(O::Delete, TopicDelete::decode(body)?.name)],
        Opcode::TopicDescribe => {
            vec![Need::topic(O::Describe, TopicDescribe::decode(body)?.name)]
        }
        Opcode::GroupCommit => {
            let r = GroupCommit::decode(body)?;
            vec![
                Need::group(O::Commit, r.group),
                Need::topic(O::Consume, r.topic),
            ]
        }
        Opcode::GroupFetch => {
            let r = GroupFetch::decode(body)?;
            vec![
                Need::group(O::Fetch, r.group),
                Need::topic(O::Describe, r.topic),
            ]
        }
        Opcode::GroupDescribe => vec![Need::group(O::Fetch, GroupDescribe::decode(body)?.group)],
        Opcode::GroupJoin => {
            let r = GroupJoin::decode(body)?;
            let mut topics = r.topics;
            topics.sort();
            topics.dedup();
            // The handler refuses more (membership::settings); refusing them here keeps a
            // frame repeating one name from costing a need per copy, each scanned against
            // every rule, on the shard thread.
            if topics.len() > MAX_TOPICS_PER_GROUP {
                return Err(DecodeError::Invalid {
                    field: "topics",
                    reason: "a group consumes at most MAX_TOPICS_PER_GROUP (16) topics",
                });
            }
            let mut needs = vec![Need::group(O::Fetch, r.group)];
            needs.extend(topics.into_iter().map(|t| Need::topic(O::Consume, t)));
            needs
        }
        Opcode::GroupHeartbeat => {
            vec![Need::group(O::Fetch, GroupHeartbeat::decode(body)?.group)]
        }
        Opcode::GroupLeave => vec![Need::group(O::Fetch, GroupLeave::decode(body)?.group)],
        Opcode::GroupMembers => vec![Need::group(O::Fetch, GroupMembers::decode(body)?.group)],
        Opcode::GroupPull => {
            let r = GroupPull::decode(body)?;
            let commit = r.commit.map(|_| Need::group(O::Commit, r.group.clone()));
            let mut needs = vec![
                Need::topic(O::Consume, r.topic),
                Need::group(O::Fetch, r.group),
            ];
            needs.extend(commit);
            needs
        }
        Opcode::MessageReject => {
            let r = MessageReject::decode(body)?;
            vec![
                Need::topic(O::Consume, r.topic),
                Need::group(O::Commit, r.group),
            ]
        }
        Opcode::Stats | Opcode::RetentionStatus => vec![Need::cluster(O::Stats)],
        Opcode::DeleteExpired => vec![Need::cluster(O::Retention)],
        Opcode::MetadataSnapshot => vec![Need::cluster(O::MetadataSnapshot)],
        Opcode::ClusterStatus | Opcode::AclList => vec![Need::cluster(O::Describe)],
        Opcode::ClusterPromote => vec![Need::cluster(O::Promote)],
        Opcode::ClusterDemote => vec![Need::cluster(O::Demote)],
        Opcode::AclAdd | Opcode::AclRemove => vec![Need::cluster(O::AlterAcls)],
        Opcode::UserCreate | Opcode::UserDelete => vec![Need::cluster(O::AlterUsers)],
        Opcode::UserList => vec![Need::cluster(O::Describe)],
    })
}

/// Whether `opcode` is an admin call, written to the audit log whether or not authorization
/// is on: the cluster operations, topic create and delete, ACL changes and lists. Known from
/// the opcode alone, so with authorization off the other requests cost nothing; a test checks
/// it against [`needs`] (an admin call is one whose needs name the cluster, or create or
/// delete a topic).
pub fn is_admin(opcode: Opcode) -> bool {
    matches!(
        opcode,
        Opcode::TopicCreate
            | Opcode::TopicDelete
            | Opcode::Stats
            | Opcode::DeleteExpired
            | Opcode::RetentionStatus
            | Opcode::MetadataSnapshot
            | Opcode::ClusterStatus
            | Opcode::ClusterPromote
            | Opcode::ClusterDemote
            | Opcode::AclAdd
            | Opcode::AclRemove
            | Opcode::AclList
            | Opcode::UserCreate
            | Opcode::UserDelete
            | Opcode::UserList
    )
}

/// Whether every topic `inner` names is one `outer` names too.
fn covers(outer: &Resource, inner: &Resource) -> bool {
    match (outer, inner) {
        (Resource::Topic(Pattern::Prefix(p)), Resource::Topic(Pattern::Literal(n)))
        | (Resource::Topic(Pattern::Prefix(p)), Resource::Topic(Pattern::Prefix(n))) => {
            n.starts_with(p.as_str())
        }
        (Resource::Topic(Pattern::Literal(a)), Resource::Topic(Pattern::Literal(b))) => a == b,
        _ => false,
    }
}

/// The name a Produce body starts with (a u16 length, then UTF-8), without decoding the
/// messages: authorizing a produce costs this peek.
fn leading_name(body: &[u8]) -> Result<&str, DecodeError> {
    let invalid = DecodeError::Invalid {
        field: "topic",
        reason: "not a length-prefixed UTF-8 name",
    };
    let len = match body {
        [a, b, ..] => u16::from_le_bytes([*a, *b]) as usize,
        _ => return Err(invalid),
    };
    body.get(2..2 + len)
        .and_then(|name| std::str::from_utf8(name).ok())
        .ok_or(invalid)
}

/// Every rule of a broker, as `<store>/acls.json` holds it and a master's metadata frames
/// carry it to its slaves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclTable {
    pub rules: Vec<Rule>,
    /// The authorization and superusers of the master these rules came from: set in every
    /// table a master sends, kept by the slave with the rules (in its file too, so a slave
    /// restarted while its master is away still enforces them). A slave decides by the
    /// stricter of its own configuration and this ([`Policy::effective`]); a master by its
    /// own configuration alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<Policy>,
}

/// How a broker decides: its `authorization` and `superusers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub authorization: Authorization,
    pub superusers: Vec<String>,
}

impl Policy {
    /// Whether a broker with configuration `own` (and, on a slave, its master's `master`)
    /// enforces the ACLs: either says `acl`. A slave at `off` under an `acl` master enforces;
    /// a slave at `acl` under an `off` master keeps enforcing.
    pub fn enforced(own: Authorization, master: Option<&Policy>) -> bool {
        own == Authorization::Acl || master.is_some_and(|m| m.authorization == Authorization::Acl)
    }

    /// Whether `principal` is a superuser on a broker whose own list is `own` (and, on a
    /// slave, its master's list): a reserved name never is.
    pub fn is_superuser(own: &[String], master: Option<&Policy>, principal: &str) -> bool {
        !is_reserved_principal(principal)
            && (own.iter().any(|s| s == principal)
                || master.is_some_and(|m| m.superusers.iter().any(|s| s == principal)))
    }
}

pub fn acls_path(store_dir: &Path) -> PathBuf {
    store_dir.join("acls.json")
}

impl AclTable {
    /// The decision for `principal` (`None`: [`ANONYMOUS`]) needing every one of `needs`:
    /// superusers are allowed; otherwise each need must be allowed by a rule and denied by
    /// none (deny wins; no rule: denied).
    pub fn decide(
        &self,
        principal: Option<&str>,
        superusers: &[String],
        needs: &[Need],
    ) -> Result<(), Denied> {
        let principal = principal
            .filter(|p| !is_reserved_principal(p))
            .unwrap_or(ANONYMOUS);
        if Policy::is_superuser(superusers, None, principal) {
            return Ok(());
        }
        for need in needs {
            let mut allowed = false;
            for rule in self.rules.iter().filter(|r| r.matches(principal, need)) {
                match rule.effect {
                    Effect::Deny => {
                        allowed = false;
                        break;
                    }
                    Effect::Allow => allowed = true,
                }
            }
            if !allowed {
                return Err(Denied {
                    principal: principal.to_string(),
                    need: need.clone(),
                });
            }
        }
        Ok(())
    }

    /// The table with `rule` added; `Ok(None)` if it holds it already.
    pub fn with_rule(&self, rule: Rule) -> Result<Option<AclTable>, String> {
        if self.rules.contains(&rule) {
            return Ok(None);
        }
        if self.rules.len() >= MAX_ACL_RULES {
            return Err(format!(
                "the broker holds {MAX_ACL_RULES} rules, its most: remove some first"
            ));
        }
        let mut table = self.clone();
        table.rules.push(rule);
        table.rules.sort();
        Ok(Some(table))
    }

    /// The table without `rule`; `None` if it does not hold it.
    pub fn without_rule(&self, rule: &Rule) -> Option<AclTable> {
        let mut table = self.clone();
        let before = table.rules.len();
        table.rules.retain(|r| r != rule);
        (table.rules.len() != before).then_some(table)
    }

    /// The file's form (indented, for people who read `acls.json`).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("an ACL table serializes")
    }

    /// The metadata frame's form (compact: it travels to every slave).
    pub fn to_wire_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an ACL table serializes")
    }

    /// Whether `principal` (`None`: [`ANONYMOUS`]) may produce to some topic: a rule allows it
    /// produce on a topic or prefix that no deny rule of it covers whole. What Kafka's
    /// InitProducerId asks of a producer that is not allowed the cluster (KIP-679: WRITE on
    /// any topic implies IdempotentWrite).
    pub fn may_produce_somewhere(&self, principal: Option<&str>, superusers: &[String]) -> bool {
        let principal = principal
            .filter(|p| !is_reserved_principal(p))
            .unwrap_or(ANONYMOUS);
        if Policy::is_superuser(superusers, None, principal) {
            return true;
        }
        let theirs = |effect| {
            self.rules.iter().filter(move |r| {
                r.effect == effect
                    && r.operation == Operation::Produce
                    && (r.principal == ANY_PRINCIPAL || r.principal == principal)
            })
        };
        theirs(Effect::Allow)
            .any(|allow| !theirs(Effect::Deny).any(|deny| covers(&deny.resource, &allow.resource)))
    }

    /// Reads a table back (a file, a metadata frame): every rule checked as when it was added.
    pub fn from_json(bytes: &[u8]) -> Result<AclTable, String> {
        let table: AclTable =
            serde_json::from_slice(bytes).map_err(|e| format!("not a valid ACL table: {e}"))?;
        if table.rules.len() > MAX_ACL_RULES {
            return Err(format!(
                "{} rules, more than the {MAX_ACL_RULES} a broker holds",
                table.rules.len()
            ));
        }
        for rule in &table.rules {
            rule.check().map_err(|e| format!("rule `{rule}`: {e}"))?;
        }
        if let Some(master) = &table.master {
            check_superusers(&master.superusers)
                .map_err(|e| format!("the master's superusers: {e}"))?;
        }
        Ok(table)
    }

    /// Reads `<store>/acls.json` (none: no rules). Blocking: at start-up and offline only.
    pub fn load(store_dir: &Path) -> Result<AclTable, String> {
        let path = acls_path(store_dir);
        match std::fs::read(&path) {
            Ok(bytes) => {
                AclTable::from_json(&bytes).map_err(|e| format!("{}: {e}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AclTable::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Writes `<store>/acls.json` atomically (a synced temporary file renamed over it, then
    /// the directory synced), blocking: for `ringmq acl --store` on a stopped broker.
    pub fn store_blocking(&self, store_dir: &Path) -> Result<(), String> {
        use std::io::Write;
        let path = acls_path(store_dir);
        let temporary = store_dir.join("acls.json.tmp");
        let fail = |what: &Path, e: std::io::Error| format!("{}: {e}", what.display());
        let mut file = std::fs::File::create(&temporary).map_err(|e| fail(&temporary, e))?;
        file.write_all(&self.to_json())
            .and_then(|_| file.sync_all())
            .map_err(|e| fail(&temporary, e))?;
        std::fs::rename(&temporary, &path).map_err(|e| fail(&path, e))?;
        std::fs::File::open(store_dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| fail(store_dir, e))
    }

    pub fn entries(&self) -> Vec<crate::protocol::admin::AclEntry> {
        self.rules.iter().map(Rule::entry).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rule(principal: &str, op: Operation, resource: &str, effect: Effect) -> Rule {
        Rule::new(principal, op, resource.parse().unwrap(), effect).unwrap()
    }

    fn produce_body(topic: &str) -> Vec<u8> {
        let mut body = Vec::new();
        ProduceRequest {
            topic,
            queue: 0,
            messages: Vec::new(),
        }
        .encode(&mut body);
        body
    }

    #[test]
    fn deny_by_default_allow_then_deny_wins() {
        let need = [Need::topic(Operation::Produce, "orders")];
        let mut table = AclTable::default();
        assert!(table.decide(Some("app"), &[], &need).is_err(), "no rule");
        table.rules.push(rule(
            "app",
            Operation::Produce,
            "topic:orders",
            Effect::Allow,
        ));
        assert_eq!(table.decide(Some("app"), &[], &need), Ok(()));
        assert!(table.decide(Some("other"), &[], &need).is_err());
        assert!(table.decide(None, &[], &need).is_err(), "anonymous");
        table.rules.push(rule(
            "*",
            Operation::Produce,
            "topic-prefix:ord",
            Effect::Deny,
        ));
        let denied = table.decide(Some("app"), &[], &need).unwrap_err();
        assert_eq!(
            denied.to_string(),
            "principal `app` is not authorized to produce topic `orders`"
        );
        assert_eq!(
            table.decide(Some("app"), &["app".to_string()], &need),
            Ok(()),
            "a superuser passes even a deny"
        );
    }

    #[test]
    fn anonymous_and_wildcard_principals() {
        let need = [Need::cluster(Operation::Stats)];
        let mut table = AclTable::default();
        table
            .rules
            .push(rule(ANONYMOUS, Operation::Stats, "cluster", Effect::Allow));
        assert_eq!(table.decide(None, &[], &need), Ok(()));
        assert!(table.decide(Some("app"), &[], &need).is_err());
        table
            .rules
            .push(rule("*", Operation::Stats, "cluster", Effect::Allow));
        assert_eq!(table.decide(Some("app"), &[], &need), Ok(()));
    }

    #[test]
    fn every_need_must_pass_group_pull_needs_topic_and_group() {
        let mut body = Vec::new();
        GroupPull {
            group: "g".into(),
            member_id: "m".into(),
            generation: 1,
            topic: "orders".into(),
            queue: 0,
            commit: None,
            offset: 0,
            max_messages: 1,
            max_bytes: 1,
            max_wait_ms: 0,
        }
        .encode(&mut body);
        let needs = needs(Opcode::GroupPull, &body).unwrap();
        assert_eq!(
            needs,
            vec![
                Need::topic(Operation::Consume, "orders"),
                Need::group(Operation::Fetch, "g")
            ]
        );
        let mut table = AclTable::default();
        table
            .rules
            .push(rule("c", Operation::Consume, "topic:orders", Effect::Allow));
        assert!(
            table.decide(Some("c"), &[], &needs).is_err(),
            "no group rule"
        );
        table
            .rules
            .push(rule("c", Operation::Fetch, "group-prefix:", Effect::Allow));
        assert_eq!(table.decide(Some("c"), &[], &needs), Ok(()));
    }

    #[test]
    fn every_opcode_has_a_mapping_and_admin_calls_are_marked() {
        let admin = |op: Opcode, body: &[u8]| {
            needs(op, body)
                .map(|n| n.iter().any(Need::is_admin))
                .unwrap_or(false)
        };
        for opcode in Opcode::ALL {
            // An empty body decodes for the empty requests and fails for the others: either
            // way no panic; where it decodes, `is_admin` agrees with the needs.
            if let Ok(needs) = needs(*opcode, &[]) {
                assert_eq!(
                    is_admin(*opcode),
                    needs.iter().any(Need::is_admin),
                    "{opcode:?}"
                );
            }
        }
        let mut create = Vec::new();
        TopicCreate {
            name: "t".into(),
            queue_count: 1,
        }
        .encode(&mut create);
        assert!(admin(Opcode::TopicCreate, &create) && is_admin(Opcode::TopicCreate));
        assert!(admin(Opcode::ClusterPromote, &{
            let mut b = Vec::new();
            ClusterPromote {
                role: String::new(),
            }
            .encode(&mut b);
            b
        }));
        assert!(admin(Opcode::MetadataSnapshot, &[]));
        assert!(admin(Opcode::DeleteExpired, &[]));
        assert!(admin(Opcode::AclList, &[]));
        assert!(!admin(Opcode::Produce, &produce_body("t")));
        assert_eq!(needs(Opcode::Ping, &[]).unwrap(), Vec::new());
        assert!(needs(Opcode::Produce, &[1]).is_err());
        assert_eq!(
            needs(Opcode::Produce, &produce_body("t")).unwrap(),
            vec![Need::topic(Operation::Produce, "t")]
        );
    }

    #[test]
    fn rules_are_checked_when_made_and_read() {
        assert!(Rule::parse("app", "produce", "group:g", "allow").is_err());
        assert!(Rule::parse("app", "promote", "topic:t", "allow").is_err());
        assert!(Rule::parse("", "produce", "topic:t", "allow").is_err());
        assert!(Rule::parse("app", "produce", "topic:", "allow").is_err());
        assert!(Rule::parse("app", "produce", "topic:a/b", "allow").is_err());
        assert!(Rule::parse("app", "produce", "queue:t", "allow").is_err());
        assert!(Rule::parse("app", "produce", "topic:t", "maybe").is_err());
        assert!(Rule::parse("app", "fly", "topic:t", "allow").is_err());
        let ok = Rule::parse("app", "alter-acls", "cluster", "deny").unwrap();
        assert_eq!(ok.operation, Operation::AlterAcls);
        let bad = br#"{"rules":[{"principal":"a","operation":"produce","resource":"group:g","effect":"allow"}]}"#;
        assert!(AclTable::from_json(bad).is_err());
    }

    fn join_body(topics: Vec<String>) -> Vec<u8> {
        let mut body = Vec::new();
        GroupJoin {
            group: "g".into(),
            client_id: "c".into(),
            host: "h".into(),
            topics,
            mode: 0,
            strategy: 0,
            orderly: 0,
            session_timeout_ms: 10_000,
        }
        .encode(&mut body);
        body
    }

    /// A join naming more distinct topics than a group may consume is refused before a need
    /// is built per name; repeats of one name count once.
    #[test]
    fn a_group_join_names_at_most_max_topics_per_group() {
        let repeated = join_body(vec!["orders".to_string(); 100_000]);
        assert_eq!(
            needs(Opcode::GroupJoin, &repeated).unwrap(),
            vec![
                Need::group(Operation::Fetch, "g"),
                Need::topic(Operation::Consume, "orders")
            ]
        );
        let at_bound = join_body((0..MAX_TOPICS_PER_GROUP).map(|i| format!("t{i}")).collect());
        assert_eq!(
            needs(Opcode::GroupJoin, &at_bound).unwrap().len(),
            1 + MAX_TOPICS_PER_GROUP
        );
        let past = join_body(
            (0..=MAX_TOPICS_PER_GROUP)
                .map(|i| format!("t{i}"))
                .collect(),
        );
        assert!(needs(Opcode::GroupJoin, &past).is_err());
    }

    /// `ANONYMOUS` and `*` are never superusers, and a principal literally named so (from a
    /// certificate, say) is decided as no principal.
    #[test]
    fn reserved_principal_names() {
        assert!(check_superusers(&["ANONYMOUS".into()]).is_err());
        assert!(check_superusers(&["*".into()]).is_err());
        assert!(check_superusers(&["".into()]).is_err());
        assert!(check_superusers(&["root".into()]).is_ok());
        let need = [Need::cluster(Operation::Stats)];
        let table = AclTable::default();
        assert!(table.decide(Some("*"), &["*".into()], &need).is_err());
        assert!(table
            .decide(Some("ANONYMOUS"), &["ANONYMOUS".into()], &need)
            .is_err());
        let denied = table.decide(Some("*"), &[], &need).unwrap_err();
        assert_eq!(denied.principal, ANONYMOUS);
        let master = Policy {
            authorization: Authorization::Acl,
            superusers: vec!["root".into()],
        };
        assert!(Policy::is_superuser(&[], Some(&master), "root"));
        assert!(!Policy::is_superuser(&[], Some(&master), "app"));
        assert!(Policy::enforced(Authorization::Off, Some(&master)));
        assert!(!Policy::enforced(Authorization::Off, None));
        assert!(Policy::enforced(
            Authorization::Acl,
            Some(&Policy {
                authorization: Authorization::Off,
                superusers: Vec::new()
            })
        ));
    }

    /// Produce or consume allowed on a topic allows describing it (Kafka's rule); a deny of
    /// produce does not deny describe, and an explicit deny of describe still wins.
    #[test]
    fn produce_and_consume_imply_describe() {
        let describe = [Need::topic(Operation::Describe, "orders")];
        let mut table = AclTable::default();
        table.rules.push(rule(
            "app",
            Operation::Produce,
            "topic:orders",
            Effect::Allow,
        ));
        assert_eq!(table.decide(Some("app"), &[], &describe), Ok(()));
        let consumer = AclTable {
            rules: vec![rule(
                "c",
                Operation::Consume,
                "topic-prefix:o",
                Effect::Allow,
            )],
            master: None,
        };
        assert_eq!(consumer.decide(Some("c"), &[], &describe), Ok(()));
        table.rules.push(rule(
            "app",
            Operation::Produce,
            "topic:orders",
            Effect::Deny,
        ));
        assert_eq!(
            table.decide(Some("app"), &[], &describe),
            Ok(()),
            "a deny of produce is not a deny of describe (Kafka's rule)"
        );
        assert!(table
            .decide(
                Some("app"),
                &[],
                &[Need::topic(Operation::Produce, "orders")]
            )
            .is_err());
        let mut explicit = consumer.clone();
        explicit
            .rules
            .push(rule("c", Operation::Describe, "topic:orders", Effect::Deny));
        assert!(explicit.decide(Some("c"), &[], &describe).is_err());
    }

    /// InitProducerId's rule: an allowed produce on some topic that no deny covers whole.
    #[test]
    fn may_produce_somewhere() {
        let mut table = AclTable::default();
        assert!(!table.may_produce_somewhere(Some("app"), &[]));
        assert!(table.may_produce_somewhere(Some("root"), &["root".into()]));
        table.rules.push(rule(
            "app",
            Operation::Produce,
            "topic-prefix:ord",
            Effect::Allow,
        ));
        assert!(table.may_produce_somewhere(Some("app"), &[]));
        assert!(!table.may_produce_somewhere(None, &[]));
        table.rules.push(rule(
            "app",
            Operation::Produce,
            "topic:orders",
            Effect::Deny,
        ));
        assert!(
            table.may_produce_somewhere(Some("app"), &[]),
            "other ord* remain"
        );
        table.rules.push(rule(
            "*",
            Operation::Produce,
            "topic-prefix:o",
            Effect::Deny,
        ));
        assert!(
            !table.may_produce_somewhere(Some("app"), &[]),
            "all of ord* denied"
        );
    }

    fn arb_rule() -> impl Strategy<Value = Rule> {
        let principal = prop_oneof![Just("*".to_string()), Just(ANONYMOUS.to_string()), "[a-c]"];
        let resource = prop_oneof![
            "[a-c]{1,3}".prop_map(|n| Resource::Topic(Pattern::Literal(n))),
            "[a-c]{0,2}".prop_map(|p| Resource::Topic(Pattern::Prefix(p))),
            "[a-c]{1,3}".prop_map(|n| Resource::Group(Pattern::Literal(n))),
            "[a-c]{0,2}".prop_map(|p| Resource::Group(Pattern::Prefix(p))),
            Just(Resource::Cluster),
        ];
        let effect = prop_oneof![Just(Effect::Allow), Just(Effect::Deny)];
        (
            principal,
            proptest::sample::select(Operation::ALL),
            resource,
            effect,
        )
            .prop_filter_map("operation fits the resource", |(p, o, r, e)| {
                Rule::new(&p, o, r, e).ok()
            })
    }

    fn arb_need() -> impl Strategy<Value = Need> {
        prop_oneof![
            (proptest::sample::select(Operation::ALL), "[a-c]{1,3}")
                .prop_map(|(o, n)| Need::topic(o, n)),
            (proptest::sample::select(Operation::ALL), "[a-c]{1,3}")
                .prop_map(|(o, n)| Need::group(o, n)),
            proptest::sample::select(Operation::ALL).prop_map(Need::cluster),
        ]
    }

    proptest! {
        /// The decision agrees with its definition: allowed iff some allow rule matches and
        /// no deny rule does; order of rules never matters; a table round-trips its file.
        #[test]
        fn decision_matches_its_definition(
            rules in proptest::collection::vec(arb_rule(), 0..12),
            need in arb_need(),
            principal in prop_oneof![Just(None), "[a-c]".prop_map(Some)],
        ) {
            // The definition, written without `Rule::matches`: a rule applies when its
            // principal is the caller's or `*`, its resource kind and name fit the target
            // (literally, or by prefix), and its operation is the need's (or, for an allow,
            // produce or consume where the need is describe).
            let name = principal.as_deref().unwrap_or(ANONYMOUS);
            let fits = |r: &Rule| {
                let who = r.principal == "*" || r.principal == name;
                let what = match (&r.resource, &need.target) {
                    (Resource::Topic(Pattern::Literal(l)), Target::Topic(t))
                    | (Resource::Group(Pattern::Literal(l)), Target::Group(t)) => l == t,
                    (Resource::Topic(Pattern::Prefix(p)), Target::Topic(t))
                    | (Resource::Group(Pattern::Prefix(p)), Target::Group(t)) => t.starts_with(p.as_str()),
                    (Resource::Cluster, Target::Cluster) => true,
                    _ => false,
                };
                who && what
            };
            let operation = |r: &Rule| {
                r.operation == need.operation
                    || (r.effect == Effect::Allow
                        && need.operation == Operation::Describe
                        && [Operation::Produce, Operation::Consume].contains(&r.operation))
            };
            let matching = |effect| rules.iter().any(|r| r.effect == effect && fits(r) && operation(r));
            let expected = matching(Effect::Allow) && !matching(Effect::Deny);
            let table = AclTable { rules: rules.clone(), master: None };
            let needs = [need.clone()];
            prop_assert_eq!(table.decide(principal.as_deref(), &[], &needs).is_ok(), expected);
            let mut reversed = rules.clone();
            reversed.reverse();
            let reversed = AclTable { rules: reversed, master: None };
            prop_assert_eq!(reversed.decide(principal.as_deref(), &[], &needs).is_ok(), expected);
            prop_assert_eq!(AclTable::from_json(&table.to_json()), Ok(table));
        }
    }
}
