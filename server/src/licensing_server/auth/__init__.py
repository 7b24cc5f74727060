"""Accounts and sessions: sign-up, login, token refresh and logout."""

from licensing_server.auth._passwords import PasswordHasher, check_password_policy
from licensing_server.auth._service import (
    AuthService,
    LoginResult,
    ProfileCache,
    SignedUserCertificate,
    UserCertificateSigner,
    UserProfile,
)
from licensing_server.auth._usernames import normalise_username

__all__ = [
    "AuthService",
    "LoginResult",
    "PasswordHasher",
    "ProfileCache",
    "SignedUserCertificate",
    "UserCertificateSigner",
    "UserProfile",
    "check_password_policy",
    "normalise_username",
]
