// Every text the iframe page shows, one dictionary per language. Spanish is the default.

export const DEFAULT_LANGUAGE = "es";

export const STRINGS = {
  es: {
    title: "Panel de la empresa",
    connecting: "Conectando con Chatwoot...",
    waiting: "Configurando...",
    waitingHint: "Estamos preparando tu empresa. Suele tardar unos segundos; esta página se actualizará sola.",
    timeout: "La configuración está tardando más de lo normal.",
    timeoutHint: "Tu empresa todavía no está lista. Vuelve a intentarlo en unos momentos.",
    missingAccount: "No se pudo identificar la cuenta de Chatwoot.",
    missingAccountHint: "Abre esta página desde el panel de Chatwoot, o añade ?accountId=<número de cuenta> a la dirección.",
    invalidAccount: "El número de cuenta de Chatwoot no es válido.",
    invalidAccountHint: "Revisa la dirección de la aplicación en Chatwoot: accountId debe ser un número entero positivo.",
    forbidden: "Este enlace no es válido o ha caducado.",
    forbiddenHint: "Vuelve a abrir la aplicación desde Chatwoot.",
    unavailable: "No se pudo cargar la información de la empresa.",
    unavailableHint: "Comprueba tu conexión y vuelve a intentarlo.",
    retry: "Reintentar",
    ready: "Empresa lista",
    companyHeading: "Tu empresa",
    companyId: "ID de empresa",
    provisioning: "Estado",
    redisPrefix: "Prefijo de Redis",
    vectorIndex: "Índice vectorial",
    chatwootAccount: "Cuenta de Chatwoot",
    createdAt: "Creada",
    provisioningStates: { ready: "Listo", pending: "Pendiente", failed: "Error" },
    provisioningNotes: {
      pending: "Terminando la preparación; esta página se actualizará sola.",
      failed: "La preparación falló. Si no se resuelve en unos minutos, contacta con soporte.",
    },
    chatwootStates: {
      suspended: "La cuenta de Chatwoot está suspendida.",
      deletion_pending: "La cuenta de Chatwoot está pendiente de eliminación.",
      deleted: "La cuenta de Chatwoot ha sido eliminada.",
    },
  },
  en: {
    title: "Company dashboard",
    connecting: "Connecting to Chatwoot...",
    waiting: "Setting up...",
    waitingHint: "We are preparing your company. It usually takes a few seconds; this page updates by itself.",
    timeout: "Setup is taking longer than usual.",
    timeoutHint: "Your company is not ready yet. Please try again in a moment.",
    missingAccount: "The Chatwoot account could not be identified.",
    missingAccountHint: "Open this page from the Chatwoot dashboard, or add ?accountId=<account number> to the address.",
    invalidAccount: "The Chatwoot account number is not valid.",
    invalidAccountHint: "Check the app's address in Chatwoot: accountId must be a positive whole number.",
    forbidden: "This link is not valid or has expired.",
    forbiddenHint: "Open the app again from Chatwoot.",
    unavailable: "The company's information could not be loaded.",
    unavailableHint: "Check your connection and try again.",
    retry: "Try again",
    ready: "Company ready",
    companyHeading: "Your company",
    companyId: "Company ID",
    provisioning: "Status",
    redisPrefix: "Redis prefix",
    vectorIndex: "Vector index",
    chatwootAccount: "Chatwoot account",
    createdAt: "Created",
    provisioningStates: { ready: "Ready", pending: "Pending", failed: "Failed" },
    provisioningNotes: {
      pending: "Finishing the setup; this page updates by itself.",
      failed: "Setup failed. If it is not solved in a few minutes, contact support.",
    },
    chatwootStates: {
      suspended: "The Chatwoot account is suspended.",
      deletion_pending: "The Chatwoot account is pending deletion.",
      deleted: "The Chatwoot account has been deleted.",
    },
  },
};

/** `lang` from the URL when it names a language we have, else English for browsers that prefer it, else Spanish. */
export function pickLanguage(requested, preferredLanguages) {
  const asked = baseLanguage(requested);
  if (Object.hasOwn(STRINGS, asked)) {
    return asked;
  }
  return baseLanguage(preferredLanguages[0]) === "en" ? "en" : DEFAULT_LANGUAGE;
}

function baseLanguage(tag) {
  return (tag || "").trim().toLowerCase().split("-")[0];
}
