"""Player identities: usernames unique across regions by their confusable skeleton, and
immutable public ids (docs/architecture.md, "Identity"). A service side by side with the
gateway and the ledger node; what is here so far is its pure core: the username rules and the
public id."""
